"""The environment templates run in: Jinja2's immutable sandbox, narrowed to what mail needs.

Undefined variables are errors that name the variable. Only allow-listed attributes, methods,
filters and globals are reachable (``calls``, ``filters``), so a new escape hatch in a Python type
does not become one in templates; a template cannot reach other templates (no ``include``,
``import`` or ``extends``), Python's own string formatting, or attributes starting with ``_``.
Operators that can build large values (``*``, ``**``, ``+``, ``%``, ``~``) are intercepted and
checked against the render's bounds (``budget``), and every ``for`` loop ticks its deadline.
"""

from __future__ import annotations

import datetime
import math
import types
from collections.abc import Mapping
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from bulkmail import errors
from bulkmail.rendering import budget, calls, filters, output

# budget.ACTIVE, read by every call, operator and slice:
# as a name of this module, one lookup cheaper.
_ACTIVE: Final = budget.ACTIVE

#: The longest template part. Compiling takes about a second per 200,000 characters of dense
#: template code, and mail clients clip messages far shorter.
MAX_SOURCE_CHARS: Final = 262_144
# Numbers stay far below the sizes where Python's arithmetic gets slow; text cannot show more than
# 4,300 digits of one anyway.
_MAX_INT_BITS: Final = 65_536


def _autoescape(name: str | None) -> bool:
    return name == "html"


def _check_repeat(guard: budget.Guard, left: object, right: object) -> None:
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
        raise budget.RenderError(
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
    code_generator_class = output.CodeGenerator
    # Reached from generated code only, as environment attributes that templates cannot name.
    guard_loop = staticmethod(calls.guard_loop)
    concat_operands = staticmethod(output.concat_operands)
    concat = staticmethod(output.join_buffer)
    escape_output = staticmethod(output.escape_output)

    def __init__(self) -> None:
        super().__init__(
            undefined=_Undefined,
            autoescape=_autoescape,
            finalize=output.finalize,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.globals = dict(calls.GLOBALS)
        self.filters = filters.allowed()

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
            guard.check_size(budget.printf_size(guard.max_chars, left, right), "'%'")
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
            if not calls.method_allowed(owner, name):
                raise SecurityError(
                    f"{type(owner).__name__}.{name}() cannot be called from a template"
                )
            size = calls.METHOD_SIZES.get(name)
            if size is not None:
                if name == "join" and len(args) == 1:
                    args = (list(args[0]),)  # counted before joining, so not a one-shot iterator
                guard.check_size(size(guard.max_chars, owner, *args, **kwargs), f"{name}()")
        elif not isinstance(obj, (Macro, LoopContext)) and id(obj) not in calls.FUNCTIONS:
            raise SecurityError(f"{type(obj).__name__} objects cannot be called from a template")
        result = context.call(obj, *args, **kwargs)
        guard.charge(result, "a call")
        return result


ENV: Final = _Sandbox()


def compile_part(part: str, source: str) -> jinja2.Template:
    """Compile one part of a template, or raise ``InvalidInput`` naming the part and line."""
    if len(source) > MAX_SOURCE_CHARS:
        raise errors.InvalidInput(
            f"{part} template is {len(source):,} characters long; the limit is {MAX_SOURCE_CHARS:,}"
        )
    filename = f"<{part} template>"
    try:
        tree = ENV.parse(source, part, filename)
        _prepare(part, tree)
        code = ENV.compile(tree, part, filename)
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
    return ENV.template_class.from_code(ENV, code, dict(calls.GLOBALS))


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
