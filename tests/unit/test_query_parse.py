"""The recipient query parser without a database: what it accepts, and how it refuses the rest."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

from bulkmail import errors, models, query

DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def compiles(text: str) -> None:
    sa.select(models.Contact.id).where(query.parse(text)).compile(dialect=DIALECT)


@pytest.mark.parametrize(
    "text",
    [
        "country = 'DE' and attributes.plan in ('pro','team') and not tags contains 'churned'",
        "COUNTRY = 'DE' AND NOT Tags CONTAINS 'x' Or email Like '%@example.org'",
        "first_name != 'Ann' or last_name < 'M' or company <= 'B' or language > 'a'",
        "attributes.seats >= -2.5 and attributes.seats in (1, 2, 3)",
        "attributes.vip = true and do_not_bulk_email != false",
        "created_at >= date '2026-01-31' and modified_at < timestamp '2026-02-01T10:00:00+01:00'",
        "created_at = date '2026-01-31'",
        "email is null or country is not null or attributes.plan is null",
        "country not in ('DE', 'FR') and country not like 'd%'",
        "((country = 'DE'))",
        "not not country = 'DE'",
        "id = 42 or id in (1, 2)",
        "first_name = 'O''Brien'",
        "attributes.date = 'x' and attributes.AND = 'y' and attributes.null is null",
        "country = 'a'\n  and\tcountry = 'b'",
        "first_name = '; drop table contacts; --'",
    ],
)
def test_valid_queries_compile_for_postgresql(text: str) -> None:
    compiles(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "country = ",
            "query column 11: expected a value ('text', 42, true, false or date '2026-01-31') "
            "after '=', found the end of the query",
        ),
        (
            "country = 'DE' and attributes.plan = ",
            "query column 38: expected a value ",
        ),
        (
            "country 'DE'",
            "query column 9: expected an operator (=, !=, <, <=, >, >=, in, not in, like, is null, "
            "contains) after 'country', found \"'DE'\"",
        ),
        ("(country = 'DE'", "query column 16: expected ')' after \"'DE'\", found the end"),
        ("country = 'DE')", "query column 15: expected the end of the query after \"'DE'\""),
        ("country = 'DE' and", "query column 19: expected a field name, 'not' or '(' after 'and'"),
        ("and country = 'DE'", "query column 1: expected a field name, 'not' or '(', found 'and'"),
        ("country = 'DE' and or x = 1", "query column 20: expected a field name, 'not' or '('"),
        ("country is", "query column 11: expected 'not' or 'null' after 'is'"),
        ("country not", "query column 12: expected 'in' or 'like' after 'not'"),
        ("country in 'DE'", "query column 12: expected '(' after 'in'"),
        ("country in ('DE' 'FR')", "query column 18: expected ')' or ','"),
        ("country = 'DE", "query column 11: the string that starts here is not closed"),
        ('country = "DE"', "query column 11: strings take single quotes"),
        ("country = #", "query column 11: unexpected character '#'; expected a value"),
        ("country = 'a' and\n  #", "query line 2 column 3: unexpected character '#'"),
        ("", "the query is empty"),
        ("   ", "the query is empty"),
    ],
)
def test_syntax_errors_name_the_column_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput) as raised:
        query.parse(text)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("country = 5", "query column 11: country is text; compare it with a 'quoted string'"),
        ("id = 'x'", "query column 6: id is a number"),
        (
            "created_at > '2026-01-01'",
            "query column 14: created_at is a time; compare it with date",
        ),
        ("created_at > date '2026-02-30'", "query column 19: '2026-02-30' is not a date"),
        ("created_at > timestamp 'soon'", "query column 24: 'soon' is not a timestamp"),
        ("do_not_bulk_email = 'yes'", "query column 21: do_not_bulk_email is true or false"),
        ("do_not_bulk_email > true", "query column 21: true and false only compare with ="),
        ("tags = 'vip'", "query column 1: tags only take contains"),
        ("tags is null", "query column 1: tags only take contains"),
        ("tags contains 5", "query column 15: tags are text"),
        ("country contains 'x'", "query column 1: contains only applies to tags"),
        ("attributes = 'x'", "query column 1: name the attribute after a dot"),
        ("country.code = 'x'", "query column 1: country has no parts"),
        ("attributes.plan in ('a', 1)", "query column 26: the list mixes kinds of values"),
        ("attributes.plan in (true)", "query column 21: in (...) takes strings or numbers"),
        ("attributes.renewal > date '2026-01-01'", "query column 22: attributes hold text"),
        ("attributes.n = 1" + "0" * 40, "query column 16: the number is longer than 40"),
        ("first_name = 'a\x00b'", "query column 14: the string contains a NUL character"),
    ],
)
def test_type_errors_point_at_the_offending_part(text: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput) as raised:
        query.parse(text)
    assert str(raised.value).startswith(message), str(raised.value)


def test_an_unknown_field_lists_the_known_ones_and_suggests_the_closest() -> None:
    with pytest.raises(errors.InvalidInput) as raised:
        query.parse("country = 'DE' and contry = 'FR'")
    message = str(raised.value)
    assert message.startswith("query column 20: unknown field 'contry' (did you mean country?)")
    for field in query.known_fields():
        assert field in message
    assert "attributes.<name>" in message


def test_keywords_are_reserved_but_allowed_as_attribute_names() -> None:
    with pytest.raises(errors.InvalidInput, match="found 'in'"):
        query.parse("country = 'DE' or in = 'x'")
    compiles("attributes.not = 'x' or attributes.contains = 'y'")
    with pytest.raises(errors.InvalidInput, match="unknown field 'android'"):
        query.parse("android = 'x'")  # a keyword prefix is still a name


def test_nesting_and_length_are_bounded() -> None:
    deep = "country = 'DE'"
    for level in range(60):
        deep = f"country = 'C{level}' {'and' if level % 2 else 'or'} ({deep})"
    with pytest.raises(errors.InvalidInput, match="nests more than 50 levels"):
        query.parse(deep)
    with pytest.raises(errors.InvalidInput, match="nests more than 50 levels"):
        query.parse("not " * 5000 + "country = 'DE'")
    with pytest.raises(errors.InvalidInput, match="the limit is|at most 100000"):
        query.parse("country = '" + "x" * 100_000 + "'")
    compiles("(" * 10_000 + "country = 'DE'" + ")" * 10_000)
    compiles(" or ".join(f"country = 'C{i}'" for i in range(2000)))


def test_sql_in_a_literal_is_a_bound_value() -> None:
    statement = sa.select(models.Contact.id).where(
        query.parse("first_name = '; drop table contacts; --'")
    )
    compiled = statement.compile(dialect=DIALECT)
    assert "drop" not in str(compiled).lower()
    assert "; drop table contacts; --" in compiled.params.values()


def test_attribute_names_are_bound_not_spliced() -> None:
    compiled = sa.select(models.Contact.id).where(query.parse("attributes.secret_plan = 'x'"))
    assert "secret_plan" not in str(compiled.compile(dialect=DIALECT))


def accepted_or_refused_on_one_line(text: str) -> None:
    """Parsing either works (and compiles for PostgreSQL) or raises InvalidInput: one line."""
    try:
        compiles(text)
    except errors.InvalidInput as error:
        message = str(error)
    else:
        return
    assert message
    assert "\n" not in message


VOCABULARY = [
    "country", "email", "tags", "attributes", ".", "plan", "id", "created_at", "do_not_bulk_email",
    "=", "!=", "<", "<=", ">", ">=", "in", "not", "like", "is", "null", "contains", "and", "or",
    "(", ")", ",", "'DE'", "'it''s'", "'", "42", "-1.5", "true", "FALSE", "date", "'2026-01-31'",
    "timestamp", "'2026-01-31T10:00:00Z'", "\n", "#", '"', "1" * 41,
]  # fmt: skip


@settings(deadline=None, max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_invalid_input(text: str) -> None:
    accepted_or_refused_on_one_line(text)


@settings(deadline=None, max_examples=1000)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=14).map(" ".join))
def test_token_soup_only_ever_raises_invalid_input(text: str) -> None:
    accepted_or_refused_on_one_line(text)
