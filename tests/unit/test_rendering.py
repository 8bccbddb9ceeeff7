"""Template rendering: output, escaping, errors that name their cause, and bounded renders."""

from __future__ import annotations

import concurrent.futures
import datetime as dt

import markupsafe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail import errors, rendering

NOW = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)
SENDER = {"name": "Example News", "address": "news@example.com"}
EMAIL = {"id": 42, "message_id": "<42@example.com>"}
FAST = rendering.Limits(max_seconds=0.2)


def contact(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": 7,
        "email": "ada@example.org",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": "Engines Ltd",
        "country": "GB",
        "language": "en",
        "tags": ["customer", "beta"],
        "attributes": {"plan": "pro", "seats": 3},
    }
    return fields | changes


def render(
    html: str,
    *,
    subject: str = "Hello",
    text: str | None = "text",
    limits: rendering.Limits = rendering.DEFAULT_LIMITS,
    recipient: dict[str, object] | None = None,
) -> rendering.Rendered:
    compiled = rendering.compile_template(subject=subject, html=html, text=text, limits=limits)
    return rendering.render(
        compiled, contact=recipient or contact(), sender=SENDER, email=EMAIL, now=NOW
    )


def test_all_three_parts_render_with_contact_sender_email_and_now() -> None:
    rendered = render(
        "<p>Hi {{ contact.first_name }} ({{ contact.attributes.plan }}, "
        "{{ contact.attributes['seats'] + 1 }} seats)</p>"
        "{% for tag in contact.tags %}<i>{{ loop.index }}:{{ tag|upper }}</i>{% endfor %}"
        "<p>{{ sender.name }} &lt;{{ sender.address }}&gt; #{{ email.id }} {{ email.message_id }}"
        " {{ now.strftime('%Y-%m-%d') }}</p>",
        subject="  {{ contact.first_name }}, your {{ now.strftime('%B') }} news\t",
        text="Hi {{ contact.first_name }} {{ contact.last_name }}",
    )
    assert rendered == rendering.Rendered(
        subject="Ada, your March news",
        html="<p>Hi Ada (pro, 4 seats)</p><i>1:CUSTOMER</i><i>2:BETA</i>"
        "<p>Example News &lt;news@example.com&gt; #42 &lt;42@example.com&gt; 2024-03-01</p>",
        text="Hi Ada Lovelace",
    )


def test_a_compiled_template_renders_each_recipient_with_their_own_data() -> None:
    compiled = rendering.compile_template(subject="Hi {{ contact.first_name }}", html="x")
    names = [
        rendering.render(
            compiled, contact=contact(first_name=name), sender=SENDER, email=EMAIL, now=NOW
        ).subject
        for name in ("Ada", "Grace", "Edsger")
    ]
    assert names == ["Hi Ada", "Hi Grace", "Hi Edsger"]


def test_html_escapes_contact_data_but_subject_and_text_do_not() -> None:
    evil = contact(first_name="<script>alert(1)</script>&")
    rendered = render(
        "<p>{{ contact.first_name }}</p>",
        subject="{{ contact.first_name }}",
        text="{{ contact.first_name }}",
        recipient=evil,
    )
    assert rendered.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;&amp;</p>"
    assert rendered.subject == rendered.text == "<script>alert(1)</script>&"


def test_html_escapes_each_printed_value_once_as_markupsafe_does() -> None:
    name = "\"Zoë\" & 'Ōno' <x>"
    rendered = render(
        "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}"
        "{% set s %}<i>{{ contact.first_name }}</i>{% endset %}"
        "{{ contact.first_name }}|{{ b(contact.first_name) }}|{{ s }}|{{ 3 }}|{{ '<u>'|safe }}",
        recipient=contact(first_name=name),
    )
    escaped = str(markupsafe.escape(name))
    assert escaped == "&#34;Zoë&#34; &amp; &#39;Ōno&#39; &lt;x&gt;"
    assert rendered.html == f"{escaped}|<b>{escaped}</b>|<i>{escaped}</i>|3|<u>"


def test_html_escaping_also_covers_concatenation() -> None:
    rendered = render("{{ '<b>' ~ contact.first_name }}|{{ '<b>'|safe ~ contact.first_name }}")
    assert rendered.html == "&lt;b&gt;Ada|<b>Ada"


@pytest.mark.parametrize("name", ["\r\nBcc: someone@example.net", "Ada\nBcc: x@y.z", "A\x00"])
def test_a_subject_with_a_line_break_or_nul_from_contact_data_is_refused(name: str) -> None:
    with pytest.raises(rendering.RenderError, match="rendered subject contains a (CR|LF|NUL)"):
        render("x", subject="Hello {{ contact.first_name }}!", recipient=contact(first_name=name))


@pytest.mark.parametrize(
    ("html", "variable"),
    [
        ("{{ contact.foo }}", "contact.foo"),
        ("{{ contact.attributes.missing }}", "contact.attributes.missing"),
        ("{{ contact.foo.bar }}", "contact.foo"),
        ("{{ contact.tags[5] }}", "contact.tags[5]"),
        ("{{ nobody }}", "nobody"),
        ("{% if contact.attributes.missing %}x{% endif %}", "contact.attributes.missing"),
        ("{{ contact.foo|title }}", "contact.foo"),
        ("{{ 'Hi ' ~ contact.foo }}", "contact.foo"),
        ("{{ [contact.foo]|join }}", "contact.foo"),
    ],
)
def test_an_undefined_variable_fails_the_render_and_is_named(html: str, variable: str) -> None:
    with pytest.raises(rendering.RenderError) as caught:
        render(html)
    assert str(caught.value) == f"html template line 1: undefined variable '{variable}'"


def test_values_some_contacts_lack_can_have_a_fallback() -> None:
    rendered = render(
        "{{ contact.attributes.missing|default('free') }} "
        "{{ contact.attributes.get('missing', 'none') }} "
        "{{ contact.attributes.missing is defined }}"
    )
    assert rendered.html == "free none False"


EMPTY = contact(first_name=None, attributes={"plan": None})


@pytest.mark.parametrize("text", ["Hi {{ contact.first_name }}!", None], ids=["text", "derived"])
def test_an_empty_field_renders_as_empty_text_in_every_part(text: str | None) -> None:
    rendered = render(
        "<p>Hi {{ contact.first_name }}!</p>",
        subject="News for {{ contact.first_name }}",
        text=text,
        recipient=EMPTY,
    )
    assert rendered == rendering.Rendered(subject="News for", html="<p>Hi !</p>", text="Hi !")


def test_an_empty_field_prints_as_empty_text_wherever_it_is_printed() -> None:
    rendered = render(
        "[{{ contact.attributes.plan }}]"
        "{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(contact.first_name) }}"
        "{% set s %}[{{ contact.first_name }}]{% endset %}{{ s }}"
        "{% autoescape false %}[{{ contact.first_name }}]{% endautoescape %}"
        "[{{ none }}][{{ contact.first_name|safe }}]",
        text="[{{ contact.first_name }}][{{ none }}]",
        recipient=EMPTY,
    )
    assert rendered.html == "[]" * 6
    assert rendered.text == "[][]"


def test_an_empty_field_is_empty_text_to_concatenation_join_and_text_filters() -> None:
    rendered = render(
        "[{{ 'Hi ' ~ contact.first_name ~ '!' }}]"
        "[{{ [contact.first_name, contact.last_name]|join(' ') }}]"
        "[{{ contact.first_name|title }}{{ contact.first_name|upper }}"
        "{{ contact.first_name|trim }}{{ contact.first_name|truncate(9) }}"
        "{{ contact.first_name|replace('N', 'M') }}{{ contact.first_name|wordwrap(5) }}"
        "{{ contact.first_name|string }}{{ contact.first_name|e }}]"
        "[{{ contact.first_name|center(3) }}][{{ contact.first_name|wordcount }}]",
        recipient=EMPTY,
    )
    assert rendered.html == "[Hi !][ Lovelace][][   ][0]"


def test_an_empty_field_can_be_tested_and_gets_a_default() -> None:
    rendered = render(
        "{% if contact.first_name %}Hi {{ contact.first_name }}{% else %}Hello{% endif %}, "
        "{{ contact.first_name|default('there') }} {{ contact.first_name or 'you' }} "
        "{{ contact.first_name is none }} {{ ''|default('x') }}{{ ''|default('y', true) }}",
        recipient=EMPTY,
    )
    assert rendered.html == "Hello, there you True y"


def test_a_block_tag_or_comment_drops_the_line_break_after_it_as_the_readme_says() -> None:
    glued = "Plan: {% if contact.attributes.plan %}pro{% endif %}\nBye\n"
    kept = "Plan: {% if contact.attributes.plan %}pro{% endif +%}\nBye\n"
    own_lines = "Hi\n{% if contact.attributes.plan %}\nThanks for going pro.\n{% endif %}\nBye\n"
    assert render("h", text=glued).text == "Plan: proBye"
    assert render("h", text=kept).text == "Plan: pro\nBye"
    assert render("h", text=own_lines).text == "Hi\nThanks for going pro.\nBye"
    # Indented tags and comments leave no line either; printed values change no line break.
    indented = "A\n  {% set x = 1 %}\n\t{# a comment #}\nB {{ x }}\n{{ x }}\nC\n"
    assert render("h", text=indented).text == "A\nB 1\n1\nC"
    assert render("<p>\n{% if true %}\nx\n{% endif %}\n</p>\n").html == "<p>\nx\n</p>"


@pytest.mark.parametrize(
    ("part", "source", "message"),
    [
        (
            "html",
            "<p>\n{{ contact.first_name }}\n{{ }\n</p>",
            "html template line 3: unexpected '}'",
        ),
        ("subject", "Hi {{ contact.first_name", "subject template line 1: unexpected end"),
        ("text", "a\n{% for x in contact.tags %}", "text template line 2: Unexpected end"),
        ("html", "{{ x|nosuchfilter }}", "html template line 1: No filter named 'nosuchfilter'"),
    ],
)
def test_a_syntax_error_names_the_part_and_line(part: str, source: str, message: str) -> None:
    parts = {"subject": "s", "html": "h", "text": "t"} | {part: source}
    with pytest.raises(errors.InvalidInput, match=message):
        rendering.compile_template(subject=parts["subject"], html=parts["html"], text=parts["text"])


def test_a_render_error_names_the_part_and_line() -> None:
    with pytest.raises(rendering.RenderError, match=r"^text template line 3: division by zero$"):
        render("x", text="a\nb\n{{ 1 / 0 }}")


@pytest.mark.parametrize(
    "html",
    ["{% include 'other.html' %}", "{% extends 'base.html' %}", "{% import 'm.html' as m %}"],
)
def test_templates_cannot_reach_other_templates(html: str) -> None:
    with pytest.raises(errors.InvalidInput, match="cannot extend, include or import"):
        rendering.compile_template(subject="s", html=html)


def test_a_template_source_beyond_the_limit_is_refused() -> None:
    source = "x" * (rendering.MAX_SOURCE_CHARS + 1)
    with pytest.raises(errors.InvalidInput, match="html template is 262,145 characters long"):
        rendering.compile_template(subject="s", html=source)


def test_validate_renders_the_sample_contact_and_refuses_what_fails_for_it() -> None:
    compiled = rendering.validate(
        subject="Hi {{ contact.first_name }}", html="{{ contact.attributes.plan|default('') }}"
    )
    assert isinstance(compiled, rendering.CompiledTemplate)
    with pytest.raises(rendering.RenderError, match="fails for a sample contact: .*'contact.foo'"):
        rendering.validate(subject="s", html="{{ contact.foo }}")
    with pytest.raises(rendering.RenderError, match="took longer than"):
        rendering.validate(
            subject="s",
            html="{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}",
            limits=FAST,
        )


def test_validate_can_use_a_sample_contact_with_custom_attributes() -> None:
    sample = dict(rendering.SAMPLE_CONTACT) | {"attributes": {"plan": "team"}}
    rendering.validate(subject="s", html="{{ contact.attributes.plan }}", contact=sample)


def test_now_must_be_timezone_aware() -> None:
    compiled = rendering.compile_template(subject="s", html="h")
    with pytest.raises(errors.InvalidInput, match="timezone-aware"):
        rendering.render(
            compiled, contact=contact(), sender=SENDER, email=EMAIL, now=dt.datetime(2024, 1, 1)
        )


def test_limits_must_be_positive() -> None:
    with pytest.raises(errors.InvalidInput, match="positive"):
        rendering.Limits(max_seconds=0)


def test_a_missing_or_blank_text_part_is_derived_from_the_rendered_html() -> None:
    html = (
        "<html><head><title>ignored</title><style>p {color: red}</style></head><body>"
        "<h1>Hello {{ contact.first_name }}</h1><p>Your <b>plan</b> is &quot;pro&quot; &amp; more."
        "</p><ul><li>one</li><li>two</li></ul>"
        "<table><tr><th>Item</th><th>Qty</th></tr><tr><td>Widget</td><td>2</td></tr></table>"
        "<p><a href='https://example.com/u?e={{ contact.email|urlencode }}'>Unsubscribe</a></p>"
        "</body></html>"
    )
    expected = (
        "Hello Ada\n\n"
        'Your plan is "pro" & more.\n\n'
        "* one\n* two\n\n"
        "Item Qty\nWidget 2\n\n"
        "[Unsubscribe](https://example.com/u?e=ada%40example.org)"
    )
    assert render(html, text=None).text == expected
    assert render(html, text="  \n").text == expected


def test_derived_text_does_not_pad_table_rows_to_the_widest_cell() -> None:
    html = (
        "<table><tr><td>{{ 'x' * 20000 }}</td></tr>"
        "{% for i in range(2000) %}<tr><td>y</td></tr>{% endfor %}</table>"
    )
    text = render(html, text=None).text
    assert len(text) < 25_000
    assert text.splitlines()[1] == "y"


def test_a_text_part_is_not_derived_from_html_with_too_many_tags() -> None:
    # Markup printed from a value: laid out per email, where the number of tags is bounded.
    html = "{% for i in range(10001) %}{{ '<br>'|safe }}{% endfor %}"
    with pytest.raises(rendering.RenderError, match="10,001 tags.*add a text template"):
        render(html, text=None)


def test_allowed_methods_and_formatting_work() -> None:
    rendered = render(
        "{{ contact.email.split('@')[1] }} {{ contact.company.upper().center(13, '*') }} "
        "{{ '%s has %d seats'|format(contact.first_name, contact.attributes.seats) }} "
        "{{ '%05.1f' % 3.14159 }} {{ ', '.join(contact.tags) }} {{ contact.tags|join('/') }} "
        "{{ now.isoformat() }} {% for t in contact.tags %}{{ loop.cycle('odd', 'even') }}"
        "{% endfor %} {{ namespace(n=2).n }} {{ dict(a=1).a }}"
    )
    assert rendered.html == (
        "example.org *ENGINES LTD* Ada has 3 seats 003.1 customer, beta customer/beta "
        "2024-03-01T09:30:00+00:00 oddeven 2 1"
    )


def test_macros_call_blocks_filter_blocks_and_recursive_loops_work() -> None:
    tree = [{"name": "a", "kids": [{"name": "b", "kids": []}]}, {"name": "c", "kids": []}]
    rendered = render(
        "{% macro box(title) %}<div>{{ title }}:{{ caller() }}</div>{% endmacro %}"
        "{% call box('<t>') %}{% filter upper %}in {{ contact.first_name }}{% endfilter %}"
        "{% endcall %}"
        "{% set greeting %}Hi {{ contact.first_name }}{% endset %}{{ greeting }}"
        "{% for node in contact.attributes.tree recursive %}"
        "({{ node.name }}{{ loop(node.kids) }}){% endfor %}",
        recipient=contact(attributes={"tree": tree}),
    )
    assert rendered.html == "<div>&lt;t&gt;:IN ADA</div>Hi Ada(a(b))(c)"


_LOOPS_THAT_OUTPUT_NOTHING = (
    "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}"
)
_NESTED_LOOPS_OVER_A_STRING = (
    "{% set s = 'ab' * 1000 %}"
    "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"
)

ATTACKS = {
    "huge repeat": ("{{ 'x' * 10**9 }}", r"output exceeds 1,048,576 bytes: '\*' would build"),
    "repeat twice": ("{{ 'x' * 10**6 * 1000 }}", "output exceeds 1,048,576 bytes"),
    "huge range": ("{% for i in range(10**9) %}{% endfor %}", r"range\(\) is limited to 100,000"),
    "loops that output nothing": (_LOOPS_THAT_OUTPUT_NOTHING, "took longer than 0.2 s"),
    "loops over a string": (_NESTED_LOOPS_OVER_A_STRING, "took longer than 0.2 s"),
    "recursive macro": (
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
        "call themselves too deeply",
    ),
    "recursive loop": (
        "{% for i in [1] recursive %}{{ loop([i]) }}{% endfor %}",
        "call themselves too deeply",
    ),
    "format_map": (
        "{{ '{0.__class__}'.format_map({'a': 1}) }}",
        "access to attribute 'format_map' of 'str' object is unsafe",
    ),
    "str.format width": (
        "{{ '{:>999999999}'.format(1) }}",
        "access to attribute 'format' of 'str' object is unsafe",
    ),
    "dunder chain": (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "access to attribute '__class__' of 'str' object is unsafe",
    ),
    "cycler globals": ("{{ cycler.__init__.__globals__ }}", "undefined variable 'cycler'"),
    "lipsum": ("{{ lipsum(n=10**6) }}", "undefined variable 'lipsum'"),
    "joiner": ("{{ joiner()() }}", "undefined variable 'joiner'"),
    "printf width": ("{{ '%999999999d' % 1 }}", r"output exceeds .*: '%' would build"),
    "printf star": ("{{ '%*d' % (10**9, 1) }}", "'\\*' field widths are not supported"),
    "center": ("{{ 'x'|center(10**9) }}", r"\|center would build 1,000,000,000"),
    "indent": ("{{ 'x'|indent(10**9, true) }}", r"\|indent would build"),
    "wordwrap": ("{{ 'x'|wordwrap(1, wrapstring='y' * 10**6) }}", r"\|wordwrap would build"),
    "replace": ("{{ ('ab' * 500000)|replace('a', 'x' * 100) }}", r"\|replace would build"),
    "format filter": ("{{ '%.999999999f'|format(1.0) }}", r"\|format would build"),
    "batch": ("{{ [1]|batch(10**9, 'y')|list }}", r"\|batch would build"),
    "str.join": (
        "{% set s = 'x' * 10**6 %}{{ ','.join([s, s, s, s, s]) }}",
        r"join\(\) would build",
    ),
    "ljust": ("{{ 'x'.ljust(10**9) }}", r"ljust\(\) would build"),
    "strftime width": ("{{ now.strftime('%1000000000Y' * 1000) }}", r"strftime\(\) would build"),
    "list of one big string": (
        "{% set s = 'x' * 10**6 %}{{ [s, s, s, s, s, s, s, s, s, s] }}",
        "printing a value would build",
    ),
    "sum of lists": (
        "{% set l = [1] * 200000 %}{{ [l, l, l, l, l, l]|sum(start=[])|length }}",
        r"\|sum would build",
    ),
    "doubling with ~": (
        "{% set a = 'x' * 10**5 %}" + "{% set a = a ~ a %}" * 5 + "{{ a|length }}",
        "'~' would build 1,600,000",
    ),
    "doubling in a namespace": (
        "{% set ns = namespace(s='x') %}"
        "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "'~' would build",
    ),
    "block buffer of a big value": (
        "{% set s = 'x' * 10**5 %}{% set b %}{% for i in range(10**5) %}{{ s }}{% endfor %}"
        "{% endset %}",
        "builds more than 8,388,608 characters",
    ),
    "block buffer of literal text": (
        "{% set b %}{% for i in range(10**5) %}" + "y" * 100 + "{% endfor %}{% endset %}",
        "a macro or block would build 10,000,000",
    ),
    "output of a loop": (
        "{% for i in range(10**5) %}{{ 'x' * 10**5 }}{% endfor %}",
        "template output exceeds 1,048,576 bytes",
    ),
    "int.to_bytes": ("{{ (1).to_bytes(10**9, 'big') }}", r"int.to_bytes\(\) cannot be called"),
    "dict.fromkeys": ("{{ dict.fromkeys(range(10)) }}", r"fromkeys\(\) cannot be called"),
    "huge power": ("{{ 2 ** (10 ** 10) }}", "'\\*\\*' would build a number of about"),
    "huge product": ("{{ (2 ** 60000) * (2 ** 60000) }}", "'\\*' would build a number of about"),
    "list mutation": (
        "{{ contact.tags.append('x') }}",
        "access to attribute 'append' of 'list' object is unsafe",
    ),
    "encode": ("{{ contact.email.encode() }}", r"str.encode\(\) cannot be called"),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("html", "reason"), ATTACKS.values(), ids=ATTACKS.keys())
def test_an_abusive_template_fails_its_render_with_the_reason(html: str, reason: str) -> None:
    with pytest.raises(rendering.RenderError, match=f"^html template line 1: .*{reason}"):
        render(html, limits=FAST)


_KEPT_ACROSS_LOOPS = {
    "slices": "{% set s = 'x' * 1000 %}{% set ns = namespace(l=[]) %}"
    "{% for i in range(10**5) %}{% set ns.l = ns.l + [s[i:]] %}{% endfor %}",
    "shared lists": "{% set ns = namespace(k=[]) %}"
    "{% for i in range(10**5) %}{% set ns.k = [ns.k, ns.k] %}{% endfor %}",
    "split words": "{% set s = 'ab ' * 300 %}{% set ns = namespace(k=[]) %}"
    "{% for i in range(10**5) %}{% set ns.k = [ns.k, s.split()] %}{% endfor %}",
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("html", _KEPT_ACROSS_LOOPS.values(), ids=_KEPT_ACROSS_LOOPS.keys())
def test_values_kept_across_loop_iterations_count_towards_the_limit(html: str) -> None:
    limits = rendering.Limits(max_output_bytes=10_000, max_seconds=5)
    with pytest.raises(rendering.RenderError, match="template output exceeds 10,000 bytes"):
        render(html, limits=limits)


def test_a_loop_can_still_keep_a_total_in_a_namespace() -> None:
    rendered = render(
        "{% set ns = namespace(total=0) %}{% for i in range(1000) %}"
        "{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}"
    )
    assert rendered.html == "499500"


@pytest.mark.parametrize(
    ("html", "message"),
    [
        ("{{ " + "9" * 5000 + " }}", "html template cannot be compiled: Exceeds the limit"),
        ("{{ " + "(" * 1000 + "1" + ")" * 1000 + " }}", "nested too deeply to compile"),
        ("{% for a in b %}" * 30 + "{% endfor %}" * 30, "nested too deeply to compile"),
    ],
)
def test_templates_beyond_what_python_compiles_are_refused(html: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        rendering.compile_template(subject="s", html=html)


def test_a_long_reason_is_shortened() -> None:
    with pytest.raises(rendering.RenderError) as caught:
        render("{{ {}['x' * 10000] }}")
    assert 500 < len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("html", "message"),
    [
        ("{{ ''|attr('format') }}", "No filter named 'attr'"),
        ("{{ [1]|pprint }}", "No filter named 'pprint'"),
        ("{{ [1, 2]|random }}", "No filter named 'random'"),
        ("{{ 'x'|tojson(indent=99) }}", "html template line 1"),
    ],
)
def test_filters_outside_the_allow_list_are_refused(html: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        render(html)


@pytest.mark.timeout(10)
def test_the_default_time_limit_is_two_seconds() -> None:
    with pytest.raises(rendering.RenderError, match="template render took longer than 2 s"):
        render(_LOOPS_THAT_OUTPUT_NOTHING)


@pytest.mark.timeout(10)
def test_the_time_limit_of_one_render_does_not_affect_others_running_at_once() -> None:
    slow = rendering.compile_template(subject="s", html=_LOOPS_THAT_OUTPUT_NOTHING, limits=FAST)
    fast = rendering.compile_template(subject="s", html="{{ contact.first_name }}")

    def run(compiled: rendering.CompiledTemplate) -> str:
        try:
            rendered = rendering.render(
                compiled, contact=contact(), sender=SENDER, email=EMAIL, now=NOW
            )
        except rendering.RenderError as exc:
            return str(exc)
        return rendered.html

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [slow, fast, fast, fast]))
    assert results[0] == "html template line 1: template render took longer than 0.2 s"
    assert results[1:] == ["Ada"] * 3


@pytest.mark.parametrize(
    ("blob", "fits"),
    [
        ("x" * 998, True),
        ("x" * 999, False),
        ("é" * 499, True),  # two bytes each in UTF-8
        ("é" * 499 + "x", False),
    ],
)
def test_the_output_limit_counts_utf8_bytes_across_all_parts(blob: str, fits: bool) -> None:
    limits = rendering.Limits(max_output_bytes=1000)
    recipient = contact(attributes={"blob": blob})

    def attempt() -> rendering.Rendered:
        return render(
            "{{ contact.attributes.blob }}",
            subject="S",
            text="T",
            limits=limits,
            recipient=recipient,
        )

    if fits:
        rendered = attempt()
        assert len((rendered.subject + rendered.html + rendered.text).encode()) == 1000
    else:
        with pytest.raises(rendering.RenderError, match="template output exceeds 1,000 bytes"):
            attempt()


def test_the_derived_text_counts_towards_the_output_limit() -> None:
    limits = rendering.Limits(max_output_bytes=1000)
    # S, <p>x...x</p> and x...x: 1 + 7 + 2n bytes
    render("<p>{{ 'x' * 496 }}</p>", subject="S", text=None, limits=limits)
    with pytest.raises(rendering.RenderError, match="template output exceeds 1,000 bytes"):
        render("<p>{{ 'x' * 497 }}</p>", subject="S", text=None, limits=limits)


@settings(database=None, max_examples=200, deadline=None)
@given(name=st.text())
def test_any_contact_value_is_escaped_in_html_kept_in_text_and_never_injects_a_header(
    name: str,
) -> None:
    recipient = contact(first_name=name)
    body = render(
        "<p>{{ contact.first_name }}</p>", text="{{ contact.first_name }}", recipient=recipient
    )
    assert body.html == f"<p>{markupsafe.escape(name)}</p>"
    assert body.text == name
    if any(char in name for char in "\r\n\x00"):
        with pytest.raises(rendering.RenderError, match="rendered subject contains"):
            render("x", subject="Hi {{ contact.first_name }}", recipient=recipient)
    else:
        rendered = render("x", subject="Hi {{ contact.first_name }}", recipient=recipient)
        assert rendered.subject == f"Hi {name}".strip(" \t")
