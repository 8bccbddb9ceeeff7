"""What a template's output passes through: every printed value, ``~`` and macro or block buffers.

These are the sandbox's output hooks, on the path of every value a template prints, so they are
written for speed. The code generator routes Jinja's output through them: ``finalize`` counts each
printed value, ``escape_output`` escapes what an HTML part prints, ``concat_operands`` checks
``~`` and ``join_buffer`` checks what a macro, call block or ``set`` block built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import markupsafe
from jinja2 import nodes
from jinja2.compiler import CodeGenerator as _JinjaCodeGenerator
from jinja2.compiler import Frame
from jinja2.runtime import markup_join, str_join

from bulkmail.rendering import budget

# budget.ACTIVE, read by every printed value: as a name of this module, one lookup cheaper.
_ACTIVE: Final = budget.ACTIVE


def finalize(value: object) -> object:
    """Count every printed value, also those printed into macro and block buffers.

    An empty field (None) prints as empty text, not as the word None, in every part.
    """
    # First, so that it raises outside a render: that keeps Jinja from folding printed constants
    # at compile time, where it escapes them before finalizing (None would become "None").
    guard = _ACTIVE.get()
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, (int, float)):
        size = 24  # numbers are bounded in size, and those too long are refused when printed
    elif value is None:
        return ""
    else:
        size = budget.text_size(value, guard.max_chars)
    # produced(), inlined on the path every printed value takes
    guard.budget -= size
    if guard.budget < 0 or size > guard.max_chars:
        guard.produced(size, "printing a value")
    return value


def join_buffer(parts: Iterable[str]) -> str:
    """Join a macro's, call block's or ``set`` block's output once its size is known to fit."""
    parts = parts if isinstance(parts, list) else list(parts)
    guard = _ACTIVE.get()
    guard.produced(sum(map(len, parts)), "a macro or block")
    return "".join(parts)


def concat_operands(autoescape: bool, operands: tuple[object, ...]) -> str:
    guard = _ACTIVE.get()
    size = sum(budget.text_size(operand, guard.max_chars) for operand in operands)
    guard.check_size(size, "'~'")
    if None in operands:
        # An empty field joins as empty text, as it prints (an undefined one raised above).
        operands = tuple("" if operand is None else operand for operand in operands)
    result: str = markup_join(operands) if autoescape else str_join(operands)
    guard.produced(len(result), "'~'")
    return result


# markupsafe's escaping without the Markup that escape() wraps each result in: that wrapping is
# Python code, and it was a tenth of a recipient's render time. The function is markupsafe's own
# (C) but private, hence the fallback.
_escape_text: Callable[[str], str] = getattr(
    markupsafe, "_escape_inner", lambda text: str(markupsafe.escape(text))
)


def escape_output(value: object) -> str:
    """A printed value of an autoescaped part, escaped exactly as markupsafe escapes it.

    Plain text will do: printed values are joined into the part at once, and Jinja wraps what
    macros and blocks print in Markup itself.
    """
    if type(value) is str:
        return _escape_text(value)
    return markupsafe.escape(value)


class CodeGenerator(_JinjaCodeGenerator):
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
