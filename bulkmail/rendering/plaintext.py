"""The text part of a message without a text template, derived from its HTML.

inscriptis lays the HTML out as text, configured so that the text stays proportional to the HTML
(no table grid, no indentation by nesting depth); the result counts towards the render's output
limit like any part. Laying out each recipient's HTML took three quarters of the render, so where
the template allows it the text is derived once, as a text template (``derive_template``), and
each recipient's HTML is laid out (``from_html``) only where it does not.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

import inscriptis
import jinja2
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_element import HtmlElement
from inscriptis.model.tag import CustomHtmlTagHandlerMapping
from jinja2 import nodes

from bulkmail.rendering import budget

#: The most tags an HTML part may have for a text part to be derived from it: inscriptis takes up
#: to 0.2 s for this many in the worst shapes (deep nesting) and cannot be interrupted; real
#: newsletters have a few thousand.
MAX_DERIVED_TAGS: Final = 10_000


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
_SPACE_RUNS: Final = re.compile(r"[ \t]{2,}|\t")


def from_html(html: str, guard: budget.Guard) -> str:
    """The text part for ``html``, or ``RenderError`` if it cannot be derived within bounds."""
    tags = html.count("<")
    if tags > MAX_DERIVED_TAGS:
        raise budget.RenderError(
            f"the html part has {tags:,} tags, more than the {MAX_DERIVED_TAGS:,} that a text "
            "part is derived from; add a text template"
        )
    guard.tick()
    try:
        text = inscriptis.get_text(html, _TEXT_CONFIG)
    except Exception as exc:
        raise budget.RenderError(
            f"the text part could not be derived from the html: {exc}"
        ) from exc
    text = tidy(text)
    guard.tick()
    guard.emit(text)
    return text


# What marks a Jinja tag's place in the HTML while inscriptis lays it out: characters of Unicode's
# private use area, which inscriptis keeps as they are and templates have no reason to contain.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK: Final = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
# What can print markup rather than text into the HTML: the layout of such output depends on each
# recipient's values, so the text part of a template that uses them is derived per email.
_MARKUP_NODES: Final = (
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.AssignBlock,
    nodes.Block,
    nodes.EvalContextModifier,
    nodes.MarkSafe,
    nodes.MarkSafeIfAutoescape,
)
_MARKUP_FILTERS: Final = frozenset({"e", "escape", "forceescape", "safe", "tojson", "xmlattr"})
# The items of an ordered list are numbered as laid out: a loop or condition among them changes
# every recipient's numbers.
_ORDERED_LIST: Final = re.compile(r"<ol\b.*?</ol\s*>", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True, slots=True)
class _Tag:
    block: bool  # {% … %}; else {{ … }}
    inner: str  # the source between its delimiters, without whitespace control (in those)


def derive_template(html: str, env: jinja2.Environment) -> str | None:
    """A text template that renders to what ``from_html`` makes of the rendered output of
    ``html``, an HTML template that compiles in ``env``.

    Derived once per template instead of laying out every recipient's HTML: each ``{{ … }}`` and
    ``{% … %}`` is marked, the marked HTML laid out as text, and the tags put back where their
    marks landed, so a recipient's text costs a render of the text, not a layout of the HTML.
    None when the result could differ from laying out the rendered HTML: markup printed from
    values (``|safe``, macros, blocks), a block tag whose mark inscriptis drops or moves (in an
    attribute, a ``<style>``), a block tag among the items of an ordered list, Jinja syntax in
    the text itself (``{% raw %}``), or runs of spaces or tabs in the text (``<pre>``), which
    ``tidy_derived`` could not tell from those that values leave.
    """
    if _OPEN in html or _CLOSE in html or html.count("<") > MAX_DERIVED_TAGS:
        return None
    tree = env.parse(html)  # it compiled as the html part already
    if any(True for _ in tree.find_all(_MARKUP_NODES)) or any(
        node.name in _MARKUP_FILTERS for node in tree.find_all(nodes.Filter)
    ):
        return None
    marked, tags = _mark(html, env)
    if marked is None or any(
        tags[int(number)].block
        for ordered in _ORDERED_LIST.findall(marked)
        for number in _MARK.findall(ordered)
    ):
        return None
    try:
        laid_out = inscriptis.get_text(marked, _TEXT_CONFIG)
    except Exception:
        return None
    if not _same_places(tags, [int(number) for number in _MARK.findall(laid_out)]):
        return None
    if any(syntax in _MARK.sub("", laid_out) for syntax in ("{{", "{%", "{#")):
        return None
    if "  " in laid_out or "\t" in laid_out:
        return None
    return "\n".join(_restore(line, tags) for line in laid_out.split("\n"))


def _mark(html: str, env: jinja2.Environment) -> tuple[str | None, list[_Tag]]:
    """``html`` with each Jinja tag replaced by its numbered mark, and the tags by number."""
    marked: list[str] = []
    tags: list[_Tag] = []
    inner: list[str] = []
    for _, kind, value in env.lexer.tokeniter(html, None):
        if kind == "data":
            marked.append(value)
        elif kind in ("variable_begin", "block_begin", "comment_begin"):
            inner = []
        elif kind in ("variable_end", "block_end"):
            marked.append(f"{_OPEN}{len(tags)}{_CLOSE}")
            tags.append(_Tag(block=kind == "block_end", inner="".join(inner).strip()))
        elif kind == "raw_begin":
            return None, []
        elif kind not in ("comment", "comment_end"):
            inner.append(value)
    return "".join(marked), tags


def _same_places(tags: list[_Tag], found: list[int]) -> bool:
    """Whether every block tag kept its place in the order, and every printed value kept its
    place between block tags (a value that inscriptis dropped, as from an attribute, prints none).
    """
    blocks = [number for number, tag in enumerate(tags) if tag.block]
    if [number for number in found if tags[number].block] != blocks:
        return False
    if len(set(found)) != len(found):
        return False
    before = 0  # block tags before each mark, in the source and in the text
    region: dict[int, int] = {}
    for number, tag in enumerate(tags):
        region[number] = before
        before += tag.block
    before = 0
    for number in found:
        if region[number] != before:
            return False
        before += tags[number].block
    return True


def _restore(line: str, tags: list[_Tag]) -> str:
    """One line of the laid-out text with its marks turned back into the tags.

    A line of block tags alone becomes those tags, which with ``trim_blocks`` print no line at
    all, as they print nothing into the HTML; block tags within text keep the whitespace on both
    sides (``{%+ … +%}``).
    """
    found = [tags[int(number)] for number in _MARK.findall(line)]
    if found and all(tag.block for tag in found) and not _MARK.sub("", line).strip():
        return "".join(f"{{% {tag.inner} %}}" for tag in found)

    def tag(match: re.Match[str]) -> str:
        found = tags[int(match[1])]
        return f"{{%+ {found.inner} +%}}" if found.block else f"{{{{ {found.inner} }}}}"

    return _MARK.sub(tag, line)


def tidy_derived(text: str) -> str:
    """A derived template's rendered text as ``from_html`` leaves laid-out HTML: the spaces and
    tabs around and in printed values become one space, as layout joins them (an empty first
    name leaves "Hello  from": "Hello from"), then ``tidy``. Line breaks in values stay."""
    if "  " in text or "\t" in text:
        text = _SPACE_RUNS.sub(" ", text)
    return tidy(text)


def tidy(text: str) -> str:
    """The text as ``from_html`` leaves it: no trailing spaces, at most one empty line in a row."""
    # The text of a derived template is tidy but where an empty value leaves a space at the end of
    # a line, or a condition or loop leaves empty lines: a few scans in C find those, where
    # splitting into lines took a third of the render.
    if not (" \n" in text or "\n\n\n" in text or text[:1].isspace() or text[-1:].isspace()):
        return text
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip("\n")
