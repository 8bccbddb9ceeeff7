"""The monitoring dashboard: an ASGI app (Starlette) with its pages, their JSON under
``/api/v1`` and ``/metrics``; every number comes from ``bulkmail.dashboard``.

Nothing else in ``bulkmail`` imports this package.
"""
