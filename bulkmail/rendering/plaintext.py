"""The text part of a message without a text template, derived from its rendered HTML.

inscriptis lays the HTML out as text, configured so that the text stays proportional to the HTML
(no table grid, no indentation by nesting depth); the result counts towards the render's output
limit like any part.
"""

from __future__ import annotations

import re
from typing import Final

import inscriptis
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_element import HtmlElement
from inscriptis.model.tag import CustomHtmlTagHandlerMapping

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
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = _BLANK_LINES.sub("\n\n", text).strip("\n")
    guard.tick()
    guard.emit(text)
    return text
