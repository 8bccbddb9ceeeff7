"""Render a template's subject, HTML body and text body for one recipient, safely and fast.

Templates are written by users, so they run in Jinja2's immutable sandbox with undefined variables
as errors, and every render is bounded in output size and in time. Compile once
(``compile_template`` or ``validate``), then ``render`` per recipient.

This module is the package's interface; the modules below it, each importing only those listed
after it:

- ``sandbox``: the Jinja2 environment, what it refuses, and compiling one part;
- ``filters``: the filters a template may use;
- ``calls``: the globals and methods a template may call;
- ``output``: what every printed value passes through, with the fast path of HTML escaping;
- ``plaintext``: the text part derived from the HTML when a template has none;
- ``budget``: the limits of one render (``Limits``, ``RenderError``) and what it has used of them.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import types
from collections.abc import Mapping
from typing import Final

import jinja2

from bulkmail import errors, headers
from bulkmail.rendering import budget, calls, plaintext, sandbox

# The names callers use, defined in the modules that own them.
Limits = budget.Limits
DEFAULT_LIMITS: Final = budget.DEFAULT_LIMITS
RenderError = budget.RenderError
MAX_RANGE: Final = calls.MAX_RANGE
MAX_SOURCE_CHARS: Final = sandbox.MAX_SOURCE_CHARS
MAX_DERIVED_TAGS: Final = plaintext.MAX_DERIVED_TAGS
# A reason is stored with each failed email; some exceptions quote whole values.
_MAX_REASON: Final = 500


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Rendered:
    """One recipient's message text."""

    subject: str
    html: str
    text: str


SAMPLE_CONTACT: Final[Mapping[str, object]] = types.MappingProxyType(
    {
        "id": 1,
        "email": "ada.lovelace@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": "Analytical Engines Ltd",
        "country": "GB",
        "language": "en",
        "tags": ("customer", "newsletter"),
        "attributes": types.MappingProxyType({}),
    }
)
SAMPLE_SENDER: Final[Mapping[str, object]] = types.MappingProxyType(
    {"name": "Example Newsletter", "address": "news@example.com"}
)
SAMPLE_EMAIL: Final[Mapping[str, object]] = types.MappingProxyType(
    {
        "id": 1,
        "message_id": "<sample@example.com>",
        "unsubscribe_url": "https://mail.example.com/u/1-sample",
    }
)


class CompiledTemplate:
    """The compiled parts of one template: render it any number of times, from any thread."""

    __slots__ = ("_derived", "_html", "_subject", "_text", "limits")

    def __init__(
        self,
        *,
        subject: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template | None,
        derived: bool = False,
        limits: Limits,
    ) -> None:
        self._subject = subject
        self._html = html
        self._text = text
        self._derived = derived  # the text template was derived from the HTML template
        self.limits = limits


def compile_template(
    *, subject: str, html: str, text: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> CompiledTemplate:
    """Compile the three parts, or raise ``InvalidInput`` naming the part and line at fault.

    A missing or blank text part is derived from the HTML: as a text template derived from the
    HTML template where it can be, else from each rendered HTML body.
    """
    compiled_html = sandbox.compile_part("html", html)
    if text and not text.isspace():
        return CompiledTemplate(
            subject=sandbox.compile_part("subject", subject),
            html=compiled_html,
            text=sandbox.compile_part("text", text),
            limits=limits,
        )
    derived = plaintext.derive_template(html, sandbox.ENV)
    return CompiledTemplate(
        subject=sandbox.compile_part("subject", subject),
        html=compiled_html,
        text=None if derived is None else sandbox.compile_part("derived text", derived),
        derived=derived is not None,
        limits=limits,
    )


def validate(
    *,
    subject: str,
    html: str,
    text: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    contact: Mapping[str, object] = SAMPLE_CONTACT,
) -> CompiledTemplate:
    """Compile the template and render it for a sample recipient, as a template is checked on save.

    ``contact`` replaces the sample contact, e.g. with one carrying the custom attributes the
    template expects.
    """
    compiled = compile_template(subject=subject, html=html, text=text, limits=limits)
    try:
        render(
            compiled,
            contact=contact,
            sender=SAMPLE_SENDER,
            email=SAMPLE_EMAIL,
            now=datetime.datetime.now(datetime.UTC),
        )
    except RenderError as exc:
        raise RenderError(f"the template fails for a sample contact: {exc}") from exc
    return compiled


def render(
    compiled: CompiledTemplate,
    *,
    contact: Mapping[str, object],
    sender: Mapping[str, object],
    email: Mapping[str, object],
    now: datetime.datetime,
) -> Rendered:
    """Render one recipient's subject, HTML and text, or raise ``RenderError`` saying why not."""
    if now.utcoffset() is None:
        raise errors.InvalidInput("now must be a timezone-aware datetime")
    variables = {**calls.GLOBALS, "contact": contact, "sender": sender, "email": email, "now": now}
    guard = budget.Guard(compiled.limits, variables)
    token = budget.ACTIVE.set(guard)
    try:
        subject = _render_part(compiled._subject, variables, guard)
        try:
            headers.check_header_value("rendered subject", subject)
        except errors.InvalidInput as exc:
            raise RenderError(str(exc)) from exc
        html = _render_part(compiled._html, variables, guard)
        if compiled._text is not None:
            text = _render_part(compiled._text, variables, guard)
            if compiled._derived:
                text = plaintext.tidy_derived(text)
        else:
            text = plaintext.from_html(html, guard)
    finally:
        budget.ACTIVE.reset(token)
    return Rendered(subject=subject.strip(" \t"), html=html, text=text)


def _render_part(
    template: jinja2.Template, variables: dict[str, object], guard: budget.Guard
) -> str:
    chunks: list[str] = []
    size = 0
    try:
        # The variables already hold the globals, so the context need not merge them in.
        stream = template.root_render_func(template.new_context(variables, shared=True))
        # Taken in batches, so that a runaway part stops early at little cost per chunk.
        # Characters never outnumber UTF-8 bytes; emit() then counts exactly.
        while batch := list(itertools.islice(stream, 1024)):
            chunks += batch
            size += sum(map(len, batch))
            if size > guard.output_left:
                raise RenderError(f"template output exceeds {guard.max_chars:,} bytes")
        text = "".join(chunks)
        guard.emit(text)
    except Exception:
        # Whatever a user's template raises fails this recipient with the reason, never the worker.
        raise _render_error(template)  # noqa: B904 - the cause is the rewritten exception
    return text


def _render_error(template: jinja2.Template) -> RenderError:
    try:
        # Rewrites the traceback so that template frames carry the template's own lines.
        sandbox.ENV.handle_exception()
    except Exception as rewritten:
        exc = rewritten
    if isinstance(exc, RecursionError):
        reason = "macros or recursive loops call themselves too deeply"
    elif isinstance(exc, MemoryError):
        reason = "the template ran out of memory"
    else:
        reason = str(exc) or type(exc).__name__
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "..."
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f"{template.name} template" + (f" line {line}" if line is not None else "")
    error = RenderError(f"{where}: {reason}")
    error.__cause__ = exc
    return error
