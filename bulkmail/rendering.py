"""Render a template's subject, HTML body and text body for one recipient, safely and fast.

Templates are written by users, so they run in Jinja2's immutable sandbox with undefined variables
as errors, and every render is bounded in output size and in time. Rendering happens in the caller's
thread without watchdogs, so the bounds are enforced from inside the template's own execution:

- every way a template can repeat work passes through a check of the deadline: ``for`` loops
  (their iterable is wrapped at compile time), calls (macros, recursion, methods), filters and
  the intercepted operators;
- every way a template can build a large value is checked before the value is built, where one
  operation can multiply its input (``'x' * n``, ``~``, ``|center(n)``, ``'%9999d' % 1``,
  ``str.join``...), and counted after, so that no single value outgrows the output limit and the
  text produced in total (macro and block buffers included) stays within a few times that limit;
- only an allow-list of filters, globals and methods is reachable, so a new escape hatch in a
  Python type does not become one in templates.

A missing text part is derived from the rendered HTML with inscriptis, laid out so that the text
stays proportional to the HTML (no table grid, no indentation by nesting depth).

Compile once (``compile_template`` or ``validate``), then ``render`` per recipient.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import functools
import itertools
import math
import re
import time
import types
from collections import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeVar

import inscriptis
import jinja2
import jinja2.filters
import markupsafe
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_element import HtmlElement
from inscriptis.model.tag import CustomHtmlTagHandlerMapping
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, missing
from markupsafe import Markup

from bulkmail import errors, headers

_T = TypeVar("_T")

#: The most items ``range()`` may produce in a template.
MAX_RANGE: Final = 100_000
#: The longest template part. Compiling takes about a second per 200,000 characters of dense
#: template code, and mail clients clip messages far shorter.
MAX_SOURCE_CHARS: Final = 262_144
#: The most tags an HTML part may have for a text part to be derived from it: inscriptis takes up
#: to 0.2 s for this many in the worst shapes (deep nesting) and cannot be interrupted; real
#: newsletters have a few thousand.
MAX_DERIVED_TAGS: Final = 10_000
# Numbers stay far below the sizes where Python's arithmetic gets slow; text cannot show more than
# 4,300 digits of one anyway.
_MAX_INT_BITS: Final = 65_536
# A reason is stored with each failed email; some exceptions quote whole values.
_MAX_REASON: Final = 500
# Values that can hold many references: charged by the text they would print as, so that many
# copies of a large value, or values kept across a loop, count.
_CONTAINERS: Final = (list, tuple, dict, Namespace)
# Text built while rendering may exceed the final output (macro and block output is counted when
# it is built and again when it is printed), but not by more than this factor.
_WORK_FACTOR: Final = 8


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Bounds on one render, all three parts together."""

    max_output_bytes: int = 1_048_576
    max_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_output_bytes <= 0 or self.max_seconds <= 0:
            raise errors.InvalidInput("render limits must be positive")


DEFAULT_LIMITS: Final = Limits()


class RenderError(errors.InvalidInput):
    """A template failed to render for one recipient; the message says where and why."""


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
    {"id": 1, "message_id": "<sample@example.com>"}
)


class CompiledTemplate:
    """The compiled parts of one template: render it any number of times, from any thread."""

    __slots__ = ("_html", "_subject", "_text", "limits")

    def __init__(
        self,
        *,
        subject: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template | None,
        limits: Limits,
    ) -> None:
        self._subject = subject
        self._html = html
        self._text = text
        self.limits = limits


def compile_template(
    *, subject: str, html: str, text: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> CompiledTemplate:
    """Compile the three parts, or raise ``InvalidInput`` naming the part and line at fault.

    A missing or blank text part is derived from each rendered HTML body instead.
    """
    return CompiledTemplate(
        subject=_compile("subject", subject),
        html=_compile("html", html),
        text=_compile("text", text) if text and not text.isspace() else None,
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
    variables = {**_GLOBALS, "contact": contact, "sender": sender, "email": email, "now": now}
    guard = _Guard(compiled.limits, variables)
    token = _ACTIVE.set(guard)
    try:
        subject = _render_part(compiled._subject, variables, guard)
        try:
            headers.check_header_value("rendered subject", subject)
        except errors.InvalidInput as exc:
            raise RenderError(str(exc)) from exc
        html = _render_part(compiled._html, variables, guard)
        if compiled._text is not None:
            text = _render_part(compiled._text, variables, guard)
        else:
            text = _derive_text(html, guard)
    finally:
        _ACTIVE.reset(token)
    return Rendered(subject=subject.strip(" \t"), html=html, text=text)


# -- The state of one render ---------------------------------------------------------------------

_monotonic = time.monotonic


class _Guard:
    """The limits of the render in progress and what it has used of them."""

    __slots__ = ("budget", "deadline", "limits", "max_chars", "output_left", "variables")

    def __init__(self, limits: Limits, variables: Mapping[str, object]) -> None:
        self.limits = limits
        self.max_chars = limits.max_output_bytes
        self.budget = limits.max_output_bytes * _WORK_FACTOR
        self.output_left = limits.max_output_bytes
        self.deadline = _monotonic() + limits.max_seconds
        self.variables = variables

    def tick(self) -> None:
        if _monotonic() > self.deadline:
            raise RenderError(f"template render took longer than {self.limits.max_seconds:g} s")

    def check_size(self, size: int, operation: str) -> None:
        """Refuse to build a value of ``size`` characters that no output could hold."""
        if size > self.max_chars:
            raise RenderError(
                f"template output exceeds {self.max_chars:,} bytes: "
                f"{operation} would build {size:,} characters"
            )

    def produced(self, size: int, operation: str) -> None:
        """Count text that was built, wherever it goes."""
        self.budget -= size
        if self.budget < 0 or size > self.max_chars:
            self.check_size(size, operation)
            raise RenderError(
                f"template output exceeds {self.max_chars:,} bytes: it builds more than "
                f"{self.max_chars * _WORK_FACTOR:,} characters of text on the way"
            )

    def charge(self, result: object, operation: str) -> None:
        """Count a value built by the template: text, or a container that can be kept."""
        if isinstance(result, str):
            self.produced(len(result), operation)
        elif isinstance(result, _CONTAINERS):
            self.produced(_text_size(result, self.max_chars), operation)

    def emit(self, text: str) -> None:
        """Count a finished part against the output limit, in UTF-8 bytes."""
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        self.output_left -= size
        if self.output_left < 0:
            raise RenderError(f"template output exceeds {self.max_chars:,} bytes")


# The render in progress in this thread or task. Outside a render, _ACTIVE.get() raises
# LookupError, which is also what keeps Jinja's compile-time constant folding from running guarded
# filters and operators on literals.
_ACTIVE: Final[contextvars.ContextVar[_Guard]] = contextvars.ContextVar("bulkmail_render_guard")


def _render_part(template: jinja2.Template, variables: dict[str, object], guard: _Guard) -> str:
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
        _ENV.handle_exception()
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


def _ignore_tag(*_: object) -> None:
    """Stands in for inscriptis's table layout, see ``_TEXT_CONFIG``."""


# Tables, the layout tool of HTML mail, become lines with their cells side by side: inscriptis's
# grid layout pads every row to the widest cell, which grows with rows times width. Lists and
# blocks are not indented, so that nesting cannot multiply the text either.
_TEXT_CONFIG: Final = ParserConfig(
    css=CSS_PROFILES["strict"]
    | {
        "ul": HtmlElement(display=Display.block),
        "ol": HtmlElement(display=Display.block),
        "table": HtmlElement(display=Display.block, margin_before=1),
        "tr": HtmlElement(display=Display.block),
        "td": HtmlElement(prefix=" "),
        "th": HtmlElement(prefix=" "),
    },
    display_links=True,  # a link's target must be readable where it cannot be clicked
    custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(
        start_tag_mapping=dict.fromkeys(("table", "tr", "td", "th"), _ignore_tag),
        end_tag_mapping=dict.fromkeys(("table", "td", "th"), _ignore_tag),
    ),
)
_BLANK_LINES: Final = re.compile(r"\n{3,}")


def _derive_text(html: str, guard: _Guard) -> str:
    tags = html.count("<")
    if tags > MAX_DERIVED_TAGS:
        raise RenderError(
            f"the html part has {tags:,} tags, more than the {MAX_DERIVED_TAGS:,} that a text "
            "part is derived from; add a text template"
        )
    guard.tick()
    try:
        text = inscriptis.get_text(html, _TEXT_CONFIG)
    except Exception as exc:
        raise RenderError(f"the text part could not be derived from the html: {exc}") from exc
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = _BLANK_LINES.sub("\n\n", text).strip("\n")
    guard.tick()
    guard.emit(text)
    return text


# -- Compiling -----------------------------------------------------------------------------------


def _compile(part: str, source: str) -> jinja2.Template:
    if len(source) > MAX_SOURCE_CHARS:
        raise errors.InvalidInput(
            f"{part} template is {len(source):,} characters long; the limit is {MAX_SOURCE_CHARS:,}"
        )
    filename = f"<{part} template>"
    try:
        tree = _ENV.parse(source, part, filename)
        _prepare(part, tree)
        code = _ENV.compile(tree, part, filename)
    except jinja2.TemplateSyntaxError as exc:
        raise errors.InvalidInput(
            f"{part} template line {exc.lineno}: {exc.message or 'syntax error'}"
        ) from exc
    except (RecursionError, MemoryError, SyntaxError) as exc:
        # Python's own compiler has limits on nesting that a template can reach.
        raise errors.InvalidInput(f"{part} template is nested too deeply to compile") from exc
    except (ValueError, OverflowError) as exc:
        # Number literals beyond what Python converts, for one.
        raise errors.InvalidInput(f"{part} template cannot be compiled: {exc}") from exc
    return _ENV.template_class.from_code(_ENV, code, dict(_GLOBALS))


def _prepare(part: str, tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise errors.InvalidInput(
            f"{part} template line {node.lineno}: a template cannot extend, include or import "
            "other templates"
        )
    # A loop whose body outputs nothing passes through no other hook, so the loop itself must.
    for loop in list(tree.find_all(nodes.For)):
        loop.iter = nodes.Call(
            nodes.EnvironmentAttribute("guard_loop", lineno=loop.lineno),
            [loop.iter],
            [],
            None,
            None,
            lineno=loop.lineno,
        )


class _CodeGenerator(CodeGenerator):
    """Sends ``~`` through the environment: Jinja cannot intercept it like other operators.
    Escapes what an autoescaped part prints with ``escape_output``."""

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if frame.eval_ctx.autoescape and not frame.eval_ctx.volatile:
            self.write("environment.escape_output(")
            if finalize.src is not None:
                self.write(finalize.src)
            return
        super()._output_child_pre(node, frame, finalize)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            autoescape = "context.eval_ctx.autoescape"
        else:
            autoescape = repr(frame.eval_ctx.autoescape)
        self.write(f"environment.concat_operands({autoescape}, (")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")


# markupsafe's escaping without the Markup that escape() wraps each result in: that wrapping is
# Python code, and it was a tenth of a recipient's render time. The function is markupsafe's own
# (C) but private, hence the fallback.
_escape_text: Callable[[str], str] = getattr(
    markupsafe, "_escape_inner", lambda text: str(markupsafe.escape(text))
)


def _escape_output(value: object) -> str:
    """A printed value of an autoescaped part, escaped exactly as markupsafe escapes it.

    Plain text will do: printed values are joined into the part at once, and Jinja wraps what
    macros and blocks print in Markup itself.
    """
    if type(value) is str:
        return _escape_text(value)
    return markupsafe.escape(value)


# -- Sizes ---------------------------------------------------------------------------------------


def _text_size(value: object, cap: int) -> int:
    """About ``len(str(value))``, without building that string; stops counting past ``cap``.

    Containers are walked because one literal such as ``[s, s, s]`` can refer to the same large
    string many times: its text is far larger than anything built so far.
    """
    if isinstance(value, str):
        return len(value)
    total = 0
    pending = [value]
    while pending and total <= cap:
        item = pending.pop()
        # Concrete types before abstract ones, which are slow to test: a walk can visit a
        # million items.
        if isinstance(item, (list, tuple)):
            pending.extend(item)
            total += 2
        elif isinstance(item, str):
            total += len(item) + 4
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 3
        elif isinstance(item, (dict, Mapping)):
            pending.extend(item.keys())
            pending.extend(item.values())
            total += 2
        elif isinstance(item, Namespace):
            pending.append(item._Namespace__attrs)
        elif isinstance(item, abc.Collection):
            pending.extend(item)
            total += 2
        else:
            # Dates, floats and Jinja's own objects print short; an undefined value raises here.
            total += len(str(item))
    return total


_PRINTF_FIELD: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def _printf_size(cap: int, template: str, values: object) -> int:
    padding = 0
    for match in _PRINTF_FIELD.finditer(template):
        for number in match.groups():
            if number == "*":
                raise RenderError("'*' field widths are not supported; write the width as a number")
            if number:
                padding += int(number) if len(number) < 10 else cap + 1
    return len(template) + padding + _text_size(values, cap)


def _inputs_size(cap: int, *args: object, **kwargs: object) -> int:
    size = 0
    for value in (*args, *kwargs.values()):
        if isinstance(value, str):
            size += len(value)
        elif not isinstance(value, (jinja2.Environment, nodes.EvalContext, Context)):
            size += _text_size(value, cap)
    return size


# -- Filters -------------------------------------------------------------------------------------

# Filters that do not turn their input into text and cannot make it larger.
_PLAIN_FILTERS: Final = (
    "abs", "count", "d", "default", "dictsort", "filesizeformat", "first", "float", "groupby",
    "int", "items", "last", "length", "list", "map", "max", "min", "reject", "rejectattr",
    "reverse", "round", "select", "selectattr", "sort", "unique",
)  # fmt: skip
# Filters that make text from their input, at most a few times its size.
_TEXT_FILTERS: Final = (
    "capitalize", "e", "escape", "forceescape", "lower", "safe", "string", "striptags", "title",
    "trim", "truncate", "upper", "urlencode", "wordcount", "xmlattr",
)  # fmt: skip
# Left out: attr (reaches attributes around the sandbox's checks), pprint (repr of anything),
# random (renders would differ for the same data), slice (its count is unbounded work), urlize.


def _center_size(cap: int, value: object, width: int = 80) -> int:
    return max(_text_size(value, cap), width)


def _indent_size(
    cap: int, s: object, width: int | str = 4, first: bool = False, blank: bool = False
) -> int:
    size = _text_size(s, cap)
    if size > cap:
        return size
    indent = len(width) if isinstance(width, str) else width
    return size + (len(str(s).splitlines()) + 1) * max(indent, 0)


def _format_size(cap: int, value: object, *args: object, **kwargs: object) -> int:
    size = _text_size(value, cap)
    if size > cap:
        return size
    return _printf_size(cap, str(value), (args, kwargs))


def _replace_size(
    cap: int,
    eval_ctx: nodes.EvalContext,
    s: object,
    old: object,
    new: object,
    count: int | None = None,
) -> int:
    size = _inputs_size(cap, s, old, new)
    if size > cap:
        return size
    return _replaced_size(cap, str(s), str(old), str(new), -1 if count is None else count)


def _wordwrap_size(
    cap: int,
    environment: jinja2.Environment,
    s: object,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> int:
    size = _text_size(s, cap)
    joint = environment.newline_sequence if wrapstring is None else wrapstring
    return size + (size + 1) * len(joint)


def _batch_size(cap: int, value: object, linecount: int, fill_with: object = None) -> int:
    return linecount if fill_with is not None else 0


@jinja2.pass_eval_context
def _join(
    eval_ctx: nodes.EvalContext,
    value: Iterable[object],
    d: str = "",
    attribute: str | int | None = None,
) -> str:
    items = list(value)  # a one-shot iterator has to be counted before it is joined
    guard = _ACTIVE.get()
    size = _text_size(items, guard.max_chars) + _text_size(d, guard.max_chars) * len(items)
    guard.check_size(size, "|join")
    return jinja2.filters.sync_do_join(eval_ctx, items, d, attribute)


@jinja2.pass_environment
def _sum(
    environment: jinja2.Environment,
    iterable: Iterable[object],
    attribute: str | int | None = None,
    start: object = 0,
) -> object:
    # Adding up lists can copy the same large list many times over.
    items = list(iterable)
    guard = _ACTIVE.get()
    guard.check_size(_inputs_size(guard.max_chars, items, start), "|sum")
    return jinja2.filters.sync_do_sum(environment, items, attribute, start)


@jinja2.pass_eval_context
def _tojson(eval_ctx: nodes.EvalContext, value: object) -> str:
    # No indent argument: indented JSON grows with nesting depth times indent.
    guard = _ACTIVE.get()
    guard.check_size(_text_size(value, guard.max_chars), "|tojson")
    return jinja2.filters.do_tojson(eval_ctx, value)


def _guarded_filter(
    name: str, func: Callable[..., Any], estimate: Callable[..., int] | None
) -> Callable[..., Any]:
    operation = f"|{name}"

    # wraps() also copies Jinja's marker for filters that take the environment or context first.
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        guard = _ACTIVE.get()
        guard.tick()
        if estimate is not None:
            guard.check_size(estimate(guard.max_chars, *args, **kwargs), operation)
        result = func(*args, **kwargs)
        guard.charge(result, operation)
        return result

    return guarded


def _filters() -> dict[str, Callable[..., Any]]:
    builtin = jinja2.filters.FILTERS
    table = {name: _guarded_filter(name, builtin[name], None) for name in _PLAIN_FILTERS}
    table |= {name: _guarded_filter(name, builtin[name], _inputs_size) for name in _TEXT_FILTERS}
    sized: dict[str, Callable[..., int]] = {
        "batch": _batch_size,
        "center": _center_size,
        "format": _format_size,
        "indent": _indent_size,
        "replace": _replace_size,
        "wordwrap": _wordwrap_size,
    }
    table |= {name: _guarded_filter(name, builtin[name], size) for name, size in sized.items()}
    own: dict[str, Callable[..., Any]] = {"join": _join, "sum": _sum, "tojson": _tojson}
    table |= {name: _guarded_filter(name, func, None) for name, func in own.items()}
    return table


# -- Calls ---------------------------------------------------------------------------------------


def _range(*args: int) -> range:
    numbers = range(*args)
    try:
        too_long = len(numbers) > MAX_RANGE
    except OverflowError:
        too_long = True
    if too_long:
        raise RenderError(f"range() is limited to {MAX_RANGE:,} items")
    return numbers


def _guard_loop(iterable: Iterable[_T]) -> Iterator[_T]:
    tick = _ACTIVE.get().tick
    for item in iterable:
        tick()
        yield item


class _Namespace(Namespace):
    """Counts what is stored: a namespace is the one thing a template can fill up loop by loop."""

    def __setitem__(self, name: str, value: Any) -> None:
        _ACTIVE.get().charge(value, "a namespace attribute")
        super().__setitem__(name, value)


# Jinja's lipsum, cycler and joiner are of no use in mail and only widen the surface.
_GLOBALS: Final[Mapping[str, object]] = {"range": _range, "dict": dict, "namespace": _Namespace}
_FUNCTIONS: Final = frozenset(id(function) for function in (_range, dict, _Namespace, _guard_loop))

_STR_METHODS: Final = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
        "isalpha", "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace",
        "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition", "removeprefix",
        "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip",
        "split", "splitlines", "startswith", "strip", "striptags", "swapcase", "title",
        "unescape", "upper", "zfill",
    }
)  # fmt: skip
_MAPPING_METHODS: Final = frozenset({"get", "items", "keys", "values"})
_SEQUENCE_METHODS: Final = frozenset({"count", "index"})
_DATE_METHODS: Final = frozenset(
    {
        "astimezone", "ctime", "date", "isocalendar", "isoformat", "isoweekday", "replace",
        "strftime", "time", "timestamp", "tzname", "utcoffset", "weekday",
    }
)  # fmt: skip
_LOOP_METHODS: Final = frozenset({"changed", "cycle"})
_METHODS_BY_TYPE: Final[Mapping[type, frozenset[str]]] = {
    str: _STR_METHODS,
    Markup: _STR_METHODS,
    dict: _MAPPING_METHODS,
    types.MappingProxyType: _MAPPING_METHODS,
    list: _SEQUENCE_METHODS,
    tuple: _SEQUENCE_METHODS,
    datetime.datetime: _DATE_METHODS,
    datetime.date: _DATE_METHODS,
    LoopContext: _LOOP_METHODS,
}


def _method_allowed(owner: object, name: str) -> bool:
    names = _METHODS_BY_TYPE.get(type(owner))
    if names is not None:
        return name in names
    if isinstance(owner, str):
        return name in _STR_METHODS
    if isinstance(owner, Mapping):
        return name in _MAPPING_METHODS
    if isinstance(owner, (list, tuple)):
        return name in _SEQUENCE_METHODS
    if isinstance(owner, (datetime.date, datetime.time)):
        return name in _DATE_METHODS
    if isinstance(owner, LoopContext):
        return name in _LOOP_METHODS
    return False


def _padded_size(cap: int, s: str, width: int, *fill: object) -> int:
    return max(len(s), width)


def _replaced_size(cap: int, s: str, old: str, new: str, count: int = -1) -> int:
    occurrences = s.count(old) if old else len(s) + 1
    if count >= 0:
        occurrences = min(occurrences, count)
    return len(s) + occurrences * max(len(new) - len(old), 0)


def _joined_size(cap: int, separator: str, items: list[object]) -> int:
    return _text_size(items, cap) + len(separator) * len(items)


def _strftime_size(cap: int, moment: object, format: str) -> int:
    # The C library pads fields to any width given (%1000Y); Python gives up at 256 times the
    # length of the format.
    return 256 * len(format) + 1024


_METHOD_SIZES: Final[Mapping[str, Callable[..., int]]] = {
    "center": _padded_size,
    "ljust": _padded_size,
    "rjust": _padded_size,
    "zfill": _padded_size,
    "replace": _replaced_size,
    "join": _joined_size,
    "strftime": _strftime_size,
}


# -- The environment -----------------------------------------------------------------------------


def _autoescape(name: str | None) -> bool:
    return name == "html"


def _finalize(value: object) -> object:
    """Count every printed value, also those printed into macro and block buffers."""
    guard = _ACTIVE.get()
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, (int, float)):
        size = 24  # numbers are bounded in size, and those too long are refused when printed
    else:
        size = _text_size(value, guard.max_chars)
    # produced(), inlined on the path every printed value takes
    guard.budget -= size
    if guard.budget < 0 or size > guard.max_chars:
        guard.produced(size, "printing a value")
    return value


def _join_buffer(parts: Iterable[str]) -> str:
    """Join a macro's, call block's or ``set`` block's output once its size is known to fit."""
    parts = parts if isinstance(parts, list) else list(parts)
    guard = _ACTIVE.get()
    guard.produced(sum(map(len, parts)), "a macro or block")
    return "".join(parts)


def _concat_operands(autoescape: bool, operands: tuple[object, ...]) -> str:
    guard = _ACTIVE.get()
    guard.check_size(sum(_text_size(operand, guard.max_chars) for operand in operands), "'~'")
    result: str = markup_join(operands) if autoescape else str_join(operands)
    guard.produced(len(result), "'~'")
    return result


def _check_repeat(guard: _Guard, left: object, right: object) -> None:
    if isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length(), "'*'")
    elif isinstance(left, (str, list, tuple)) and isinstance(right, int):
        guard.check_size(len(left) * right, "'*'")
    elif isinstance(right, (str, list, tuple)) and isinstance(left, int):
        guard.check_size(len(right) * left, "'*'")


def _check_power(left: object, right: object) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_bits(math.ceil(right * math.log2(abs(left))), "'**'")


def _check_bits(bits: int, operation: str) -> None:
    if bits > _MAX_INT_BITS:
        raise RenderError(
            f"{operation} would build a number of about {bits:,} bits; "
            f"templates are limited to {_MAX_INT_BITS:,}"
        )


class _Undefined(jinja2.StrictUndefined):
    """Names the missing variable by its path from the template's variables."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint is not None:
            return self._undefined_hint
        name = self._undefined_name
        if self._undefined_obj is missing:
            return f"undefined variable {name!r}"
        path = _path_to(self._undefined_obj)
        if path is None:
            return f"{type(self._undefined_obj).__name__} value has no attribute {name!r}"
        return (
            f"undefined variable '{path}.{name}'"
            if isinstance(name, str)
            else f"undefined variable '{path}[{name!r}]'"
        )


def _path_to(target: object) -> str | None:
    try:
        guard = _ACTIVE.get()
    except LookupError:
        return None
    pending: list[tuple[str, object]] = list(guard.variables.items())
    while pending:
        path, value = pending.pop()
        if value is target:
            return path
        if isinstance(value, Mapping) and path.count(".") < 3:
            pending.extend((f"{path}.{key}", item) for key, item in value.items())
    return None


_OWN_ATTRIBUTES: Final = {kind: frozenset(dir(kind)) for kind in (dict, types.MappingProxyType)}
# Immutable types whose attributes without a leading underscore are all safe to read.
_PLAIN_TYPES: Final = frozenset(
    {LoopContext, datetime.datetime, datetime.date, datetime.time, datetime.timedelta}
)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator
    # Reached from generated code only, as environment attributes that templates cannot name.
    guard_loop = staticmethod(_guard_loop)
    concat_operands = staticmethod(_concat_operands)
    concat = staticmethod(_join_buffer)
    escape_output = staticmethod(_escape_output)

    def __init__(self) -> None:
        super().__init__(
            undefined=_Undefined,
            autoescape=_autoescape,
            finalize=_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.globals = dict(_GLOBALS)
        self.filters = _filters()

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        if type(obj) in _PLAIN_TYPES:
            return True
        # str.format's fields reach attributes by name and pad to any width; the format filter
        # and the % operator do the same job under the size checks.
        if attr in ("format", "format_map") and isinstance(obj, str):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        return None

    def getattr(self, obj: Any, attribute: str) -> Any:
        # contact.first_name: a mapping's own attributes win over its keys, as in Jinja, but
        # knowing them per type saves Jinja's failed attribute lookup on each key.
        own = _OWN_ATTRIBUTES.get(type(obj))
        if own is not None and attribute not in own:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        # Name the undefined variable itself, not the unsafe attribute looked up on it.
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            _ACTIVE.get().charge(result, "a slice")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        guard = _ACTIVE.get()
        guard.tick()
        if operator == "*":
            _check_repeat(guard, left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                guard.check_size(len(left) + len(right), "'+'")
        elif isinstance(left, str):
            guard.check_size(_printf_size(guard.max_chars, left, right), "'%'")
        result = self.binop_table[operator](left, right)
        guard.charge(result, f"'{operator}'")
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        guard = _ACTIVE.get()
        guard.tick()
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        if isinstance(obj, (types.BuiltinMethodType, types.MethodType)):
            owner, name = obj.__self__, obj.__name__
            if not _method_allowed(owner, name):
                raise SecurityError(
                    f"{type(owner).__name__}.{name}() cannot be called from a template"
                )
            size = _METHOD_SIZES.get(name)
            if size is not None:
                if name == "join" and len(args) == 1:
                    args = (list(args[0]),)  # counted before joining, so not a one-shot iterator
                guard.check_size(size(guard.max_chars, owner, *args, **kwargs), f"{name}()")
        elif not isinstance(obj, (Macro, LoopContext)) and id(obj) not in _FUNCTIONS:
            raise SecurityError(f"{type(obj).__name__} objects cannot be called from a template")
        result = context.call(obj, *args, **kwargs)
        guard.charge(result, "a call")
        return result


_ENV: Final = _Sandbox()
