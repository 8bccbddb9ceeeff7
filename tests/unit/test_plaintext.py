"""The text part of an HTML-only template: derived once from the template, it reads as laying out
each recipient's rendered HTML does."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bulkmail import rendering
from bulkmail.rendering import budget, plaintext, sandbox

# A newsletter as mail tools write them: table layout, a hidden preheader, styles, lists, links
# carrying variables, a condition and a loop with an else.
NEWSLETTER = (Path(__file__).parent / "data" / "newsletter.html").read_text()
NOW = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)
SENDER = {"name": "News & Co", "address": "news@example.com"}
EMAIL = {"id": 42, "message_id": "<42@example.com>"}
ADA = {
    "id": 7,
    "email": "ada@example.org",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "company": "Engines Ltd",
    "country": "GB",
    "language": "en",
    "tags": ["customer", "beta"],
    "attributes": {"plan": "free", "seats": 3},
}
# Values that look like markup are text: escaped into the HTML, kept as they are in the text.
MARKUP = ADA | {
    "first_name": '<b>Ada</b> & "Bob"',
    "company": "Engines <Ltd> & Sons",
    "tags": ["<i>beta</i>", "a < b"],
    "attributes": {"plan": "pro", "seats": 12},
}
NO_TAGS = ADA | {"tags": [], "last_name": None}
# Layout joins the spaces around and in values: an empty first name leaves one space, not two.
SPACES = ADA | {"first_name": "", "last_name": " Love\t lace  ", "company": "Engines   Ltd"}


def texts(html: str, contact: dict[str, object]) -> tuple[str, str]:
    """The text part as rendered, and as laying out this recipient's rendered HTML makes it."""
    compiled = rendering.compile_template(subject="News", html=html)
    rendered = rendering.render(compiled, contact=contact, sender=SENDER, email=EMAIL, now=NOW)
    laid_out = plaintext.from_html(rendered.html, budget.Guard(rendering.DEFAULT_LIMITS, {}))
    return rendered.text, laid_out


@pytest.mark.parametrize(
    "contact", [ADA, MARKUP, NO_TAGS, SPACES], ids=["plain", "markup", "no-tags", "spaces"]
)
def test_a_newsletter_derives_its_text_template_once_and_reads_as_its_html(
    contact: dict[str, object],
) -> None:
    assert plaintext.derive_template(NEWSLETTER, sandbox.ENV) is not None
    text, laid_out = texts(NEWSLETTER, contact)
    assert text == laid_out


def test_the_derived_text_keeps_links_lists_and_values_that_look_like_markup() -> None:
    text, _ = texts(NEWSLETTER, MARKUP)
    assert 'Hello <b>Ada</b> & "Bob" Lovelace!' in text
    assert "at Engines <Ltd> & Sons — here is what changed this autumn & what" in text
    assert "* Scheduled sends: pick the hour, we do the rest.\n" in text
    assert "* <i>beta</i>\n* a < b\n\n" in text
    assert "Your 12 seats renew on 01 March 2024." in text
    assert "Upgrade" not in text
    assert "[News & Co](mailto:news@example.com)" in text
    assert "[Unsubscribe](https://example.com/unsubscribe?e=ada%40example.org&t=42)" in text
    assert "{" not in text
    assert "display:none" not in text
    assert "@media" not in text
    text, _ = texts(NEWSLETTER, NO_TAGS)
    assert "Hello Ada !" in text
    assert "* none yet: [add some](https://example.com/tags)" in text
    text, _ = texts(NEWSLETTER, SPACES)
    assert "Hello Love lace !" in text
    assert "Free plan at Engines Ltd — here" in text


def test_a_value_that_looks_like_an_entity_stays_as_written_in_the_derived_text() -> None:
    # Laying out the HTML decodes entities twice (inscriptis after lxml): "&amp;" became "&".
    text, laid_out = texts(NEWSLETTER, ADA | {"company": "R&amp;D Ltd"})
    assert "Thank you for using the Free plan at R&amp;D Ltd — here" in text
    assert "Thank you for using the Free plan at R&D Ltd — here" in laid_out


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            "<p>Hi</p>{{ contact.attributes.bio|safe }}",
            "Hi\n\n* <ul> in a bio\n* two",
        ),
        (
            "{% macro item(x) %}<li>{{ x }}</li>{% endmacro %}<ul>{{ item('a') }}</ul>",
            "* a",
        ),
        (
            "<ol>{% for tag in contact.tags %}<li>{{ tag }}</li>{% endfor %}</ol>",
            "1. customer\n2. beta",
        ),
        (
            '<p class="{% if contact.tags %}tagged{% endif %}">Hi</p>',
            "Hi",
        ),
        (
            "<p>{% raw %}{{ not a tag }}{% endraw %}</p>",
            "{{ not a tag }}",
        ),
        (
            "<pre>Name:\t{{ contact.first_name }}\nPlan:  {{ contact.attributes.plan }}</pre>",
            "Name:\tAda\nPlan:  free",
        ),
    ],
    ids=["safe", "macro", "ordered-list", "tag-in-attribute", "raw", "preformatted"],
)
def test_templates_whose_text_depends_on_each_rendered_html_lay_out_each_email(
    html: str, expected: str
) -> None:
    assert plaintext.derive_template(html, sandbox.ENV) is None
    bio = "<ul><li>&lt;ul&gt; in a bio</li><li>two</li></ul>"
    contact = ADA | {"attributes": {"bio": bio, "plan": "free"}}
    text, laid_out = texts(html, contact)
    assert text == laid_out == expected


def test_whitespace_control_stays_in_the_html_and_signs_in_the_values() -> None:
    html = (
        "<p>Seats:\n  {%- if contact.attributes.seats -%} {{ -contact.attributes.seats }}"
        "{% endif %}</p>"
    )
    assert plaintext.derive_template(html, sandbox.ENV) is not None
    text, laid_out = texts(html, ADA)
    assert text == laid_out == "Seats:-3"
