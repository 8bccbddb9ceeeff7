"""The filters a template may use: an allow-list, each filter checked against the render's bounds.

Every filter ticks the deadline and counts the value it builds. Filters that can make their input
many times larger (``|center(n)``, ``|indent``, ``|wordwrap``, ``|replace``, ``|format``,
``|join``...) have a size estimate, checked against the output limit before they run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Final

import jinja2
import jinja2.filters
from jinja2 import nodes
from jinja2.runtime import Context

from bulkmail.rendering import budget, calls

# budget.ACTIVE, read by every filter: as a name of this module, one lookup cheaper.
_ACTIVE: Final = budget.ACTIVE


def _inputs_size(cap: int, *args: object, **kwargs: object) -> int:
    size = 0
    for value in (*args, *kwargs.values()):
        if isinstance(value, str):
            size += len(value)
        elif not isinstance(value, (jinja2.Environment, nodes.EvalContext, Context)):
            size += budget.text_size(value, cap)
    return size


# Filters that do not turn their input into text and cannot make it larger.
_PLAIN_FILTERS: Final = (
    "abs", "count", "dictsort", "filesizeformat", "first", "float", "groupby", "int", "items",
    "last", "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse", "round",
    "select", "selectattr", "sort", "unique",
)  # fmt: skip
# Filters that make text from their input, at most a few times its size. Like printing, they take
# an empty field (None) as empty text.
_TEXT_FILTERS: Final = (
    "capitalize", "e", "escape", "forceescape", "lower", "safe", "string", "striptags", "title",
    "trim", "truncate", "upper", "urlencode", "wordcount", "xmlattr",
)  # fmt: skip
# Left out: attr (reaches attributes around the sandbox's checks), pprint (repr of anything),
# random (renders would differ for the same data), slice (its count is unbounded work), urlize.


def _center_size(cap: int, value: object, width: int = 80) -> int:
    return max(budget.text_size(value, cap), width)


def _indent_size(
    cap: int, s: object, width: int | str = 4, first: bool = False, blank: bool = False
) -> int:
    size = budget.text_size(s, cap)
    if size > cap:
        return size
    indent = len(width) if isinstance(width, str) else width
    return size + (len(str(s).splitlines()) + 1) * max(indent, 0)


def _format_size(cap: int, value: object, *args: object, **kwargs: object) -> int:
    size = budget.text_size(value, cap)
    if size > cap:
        return size
    return budget.printf_size(cap, str(value), (args, kwargs))


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
    return calls.replaced_size(cap, str(s), str(old), str(new), -1 if count is None else count)


def _wordwrap_size(
    cap: int,
    environment: jinja2.Environment,
    s: object,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> int:
    size = budget.text_size(s, cap)
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
    if attribute is None:
        items = ["" if item is None else item for item in items]  # empty fields, as printed
    guard = _ACTIVE.get()
    cap = guard.max_chars
    guard.check_size(budget.text_size(items, cap) + budget.text_size(d, cap) * len(items), "|join")
    return jinja2.filters.sync_do_join(eval_ctx, items, d, attribute)


def _default(value: object, default_value: object = "", boolean: bool = False) -> object:
    # An empty field (None) gets the default too, like an attribute the contact lacks.
    if value is None:
        return default_value
    return jinja2.filters.do_default(value, default_value, boolean)


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
    guard.check_size(budget.text_size(value, guard.max_chars), "|tojson")
    return jinja2.filters.do_tojson(eval_ctx, value)


def _guarded_filter(
    name: str, func: Callable[..., Any], estimate: Callable[..., int] | None, *, text: bool = False
) -> Callable[..., Any]:
    operation = f"|{name}"
    # Where a text filter finds its value, after the environment or context that Jinja's marker
    # says it takes first: an empty field (None) becomes the empty text that it prints as.
    at = (1 if hasattr(func, "jinja_pass_arg") else 0) if text else -1

    # wraps() also copies Jinja's marker for filters that take the environment or context first.
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        guard = _ACTIVE.get()
        guard.tick()
        if at >= 0 and args[at] is None:
            args = (*args[:at], "", *args[at + 1 :])
        if estimate is not None:
            guard.check_size(estimate(guard.max_chars, *args, **kwargs), operation)
        result = func(*args, **kwargs)
        guard.charge(result, operation)
        return result

    return guarded


def allowed() -> dict[str, Callable[..., Any]]:
    """The filters of the sandbox, by name."""
    builtin = jinja2.filters.FILTERS
    table = {name: _guarded_filter(name, builtin[name], None) for name in _PLAIN_FILTERS}
    table |= {
        name: _guarded_filter(name, builtin[name], _inputs_size, text=True)
        for name in _TEXT_FILTERS
    }
    sized_text: dict[str, Callable[..., int]] = {
        "center": _center_size,
        "indent": _indent_size,
        "replace": _replace_size,
        "wordwrap": _wordwrap_size,
    }
    table |= {
        name: _guarded_filter(name, builtin[name], size, text=True)
        for name, size in sized_text.items()
    }
    sized: dict[str, Callable[..., int]] = {"batch": _batch_size, "format": _format_size}
    table |= {name: _guarded_filter(name, builtin[name], size) for name, size in sized.items()}
    own: dict[str, Callable[..., Any]] = {
        "d": _default,
        "default": _default,
        "join": _join,
        "sum": _sum,
        "tojson": _tojson,
    }
    table |= {name: _guarded_filter(name, func, None) for name, func in own.items()}
    return table
