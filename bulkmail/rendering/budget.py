"""The bounds of one render, and what the render in progress has used of them.

Templates are written by users, so every render is bounded in output size and in time. Rendering
happens in the caller's thread without watchdogs, so the bounds are enforced from inside the
template's own execution:

- every way a template can repeat work passes through a check of the deadline: ``for`` loops
  (their iterable is wrapped at compile time), calls (macros, recursion, methods), filters and
  the intercepted operators;
- every way a template can build a large value is checked before the value is built, where one
  operation can multiply its input (``'x' * n``, ``~``, ``|center(n)``, ``'%9999d' % 1``,
  ``str.join``...), and counted after, so that no single value outgrows the output limit and the
  text produced in total (macro and block buffers included) stays within a few times that limit.

The checks sit where the work is done (the sandbox, its output, filters and calls); they all
report to the ``Guard`` of the render in progress, found through ``ACTIVE``. This module is the
bottom of the package: it imports none of the others.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import time
from collections import abc
from collections.abc import Mapping
from typing import Final

from jinja2.utils import Namespace

from bulkmail import errors

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


# Defined here, with the bounds that are its most common cause, so that every module can raise it.
class RenderError(errors.InvalidInput):
    """A template failed to render for one recipient; the message says where and why."""


_monotonic = time.monotonic


class Guard:
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
            self.produced(text_size(result, self.max_chars), operation)

    def emit(self, text: str) -> None:
        """Count a finished part against the output limit, in UTF-8 bytes."""
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        self.output_left -= size
        if self.output_left < 0:
            raise RenderError(f"template output exceeds {self.max_chars:,} bytes")


# The render in progress in this thread or task. Outside a render, ACTIVE.get() raises
# LookupError, which is also what keeps Jinja's compile-time constant folding from running guarded
# filters and operators on literals.
ACTIVE: Final[contextvars.ContextVar[Guard]] = contextvars.ContextVar("bulkmail_render_guard")


def text_size(value: object, cap: int) -> int:
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


def printf_size(cap: int, template: str, values: object) -> int:
    """At most how long ``template % values`` is (the ``%`` operator and the format filter)."""
    padding = 0
    for match in _PRINTF_FIELD.finditer(template):
        for number in match.groups():
            if number == "*":
                raise RenderError("'*' field widths are not supported; write the width as a number")
            if number:
                padding += int(number) if len(number) < 10 else cap + 1
    return len(template) + padding + text_size(values, cap)
