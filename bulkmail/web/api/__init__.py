"""The HTTP API under ``/api/v1``: calls made with a user's API token, as that user.

The web app's gate checks the token (``calls.authenticate``); each module here is one resource's
routes, thin over the domain modules; refusals are RFC 9457 problem documents (``problems``).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from bulkmail.web.api import background

routes: list[BaseRoute] = [*background.routes]
