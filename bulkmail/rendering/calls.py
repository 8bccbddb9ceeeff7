"""What a template may call: its few global functions, and the methods allowed per type.

Only an allow-list is reachable, so that a new method of a Python type does not become an escape
hatch in templates. Methods that can build a large value have a size estimate, checked against the
output limit before they run (``sandbox`` does the calling).
"""

from __future__ import annotations

import datetime
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeVar

from jinja2.runtime import LoopContext
from jinja2.utils import Namespace
from markupsafe import Markup

from bulkmail.rendering import budget

# budget.ACTIVE, read by every loop and namespace attribute:
# as a name of this module, one lookup cheaper.
_ACTIVE: Final = budget.ACTIVE

_T = TypeVar("_T")

#: The most items ``range()`` may produce in a template.
MAX_RANGE: Final = 100_000


def _range(*args: int) -> range:
    numbers = range(*args)
    try:
        too_long = len(numbers) > MAX_RANGE
    except OverflowError:
        too_long = True
    if too_long:
        raise budget.RenderError(f"range() is limited to {MAX_RANGE:,} items")
    return numbers


def guard_loop(iterable: Iterable[_T]) -> Iterator[_T]:
    """What every ``for`` loop of a template iterates over (``sandbox`` wraps each at compile)."""
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
GLOBALS: Final[Mapping[str, object]] = {"range": _range, "dict": dict, "namespace": _Namespace}
# The functions a template may call, besides macros and allowed methods.
FUNCTIONS: Final = frozenset(id(function) for function in (_range, dict, _Namespace, guard_loop))

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


def method_allowed(owner: object, name: str) -> bool:
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


def replaced_size(cap: int, s: str, old: str, new: str, count: int = -1) -> int:
    """The length of ``s.replace(old, new, count)`` (also the replace filter's)."""
    occurrences = s.count(old) if old else len(s) + 1
    if count >= 0:
        occurrences = min(occurrences, count)
    return len(s) + occurrences * max(len(new) - len(old), 0)


def _joined_size(cap: int, separator: str, items: list[object]) -> int:
    return budget.text_size(items, cap) + len(separator) * len(items)


def _strftime_size(cap: int, moment: object, format: str) -> int:
    # The C library pads fields to any width given (%1000Y); Python gives up at 256 times the
    # length of the format.
    return 256 * len(format) + 1024


# How large a method's result can be, from (cap, owner, *args, **kwargs).
METHOD_SIZES: Final[Mapping[str, Callable[..., int]]] = {
    "center": _padded_size,
    "ljust": _padded_size,
    "rjust": _padded_size,
    "zfill": _padded_size,
    "replace": replaced_size,
    "join": _joined_size,
    "strftime": _strftime_size,
}
