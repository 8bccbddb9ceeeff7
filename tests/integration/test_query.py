"""Recipient queries against seeded contacts: exactly who matches."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from bulkmail import contacts, db, errors, models

EVERYONE = {"Ada", "Bob", "Cy", "Dee", "Eve"}


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.fixture
def seeded(engine: sa.Engine) -> sa.Engine:
    people: list[dict[str, object]] = [
        {
            "email": "Ada@Example.org",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "country": "DE",
            "tags": ["customer", "vip"],
            "attributes": {"plan": "pro", "seats": "12", "vip": "TRUE", "renewal": "2026-03-01"},
            "created_at": _at("2026-01-15T10:00:00"),
        },
        {
            "email": "bob@example.com",
            "first_name": "Bob",
            "last_name": "Builder",
            "country": "FR",
            "tags": ["customer", "churned"],
            "attributes": {"plan": "team", "seats": 7, "vip": False},
            "do_not_bulk_email": True,
            "created_at": _at("2026-01-31T23:59:59.999999"),
        },
        {
            "email": "cy@example.net",
            "first_name": "Cy",
            "attributes": {"plan": "free", "seats": "n/a", "note": "O'Brien; drop"},
            "created_at": _at("2026-02-01T00:00:00"),
        },
        {
            "email": "dee@example.org",
            "first_name": "Dee",
            "last_name": "de Vries",
            "country": "de",
            "tags": ["newsletter"],
            "attributes": {"plan": None, "seats": "012", "vip": "yes"},
            "created_at": _at("2025-12-31T12:00:00"),
        },
        {
            "email": None,
            "first_name": "Eve",
            "country": "DE",
            "attributes": {"seats": 100.5, "vip": True},
            "created_at": _at("2026-06-01T08:00:00"),
        },
    ]
    with db.session_scope(engine) as session:
        for person in people:
            created_at = person.pop("created_at")
            contact = contacts.add(session, **person)  # type: ignore[arg-type]
            contact.created_at = created_at  # type: ignore[assignment]
    return engine


def matching(engine: sa.Engine, text: str) -> set[str]:
    with db.session_scope(engine) as session:
        found = contacts.list_contacts(session, query=text, limit=1000)
        assert contacts.count(session, text) == len(found)
        return {contact.first_name or "" for contact in found}


CASES = [
    # text fields: binary and case-sensitive; a missing value never matches a comparison
    ("country = 'DE'", {"Ada", "Eve"}),
    ("country != 'DE'", {"Bob", "Cy", "Dee"}),
    ("country in ('DE', 'FR')", {"Ada", "Bob", "Eve"}),
    ("country not in ('DE', 'FR')", {"Cy", "Dee"}),
    ("country is null", {"Cy"}),
    ("country is not null", {"Ada", "Bob", "Dee", "Eve"}),
    ("country like 'd%'", {"Ada", "Dee", "Eve"}),
    ("country not like 'D_'", {"Bob", "Cy"}),
    ("last_name < 'M'", {"Ada", "Bob"}),
    ("last_name >= 'M'", {"Dee"}),
    ("first_name = 'ada'", set()),
    ("email = 'ADA@example.ORG'", {"Ada"}),
    ("email like '%@EXAMPLE.org'", {"Ada", "Dee"}),
    ("email is null", {"Eve"}),
    ("email like 'bob\\_%'", set()),
    # attributes: the literal's type decides how the value is read
    ("attributes.plan = 'pro'", {"Ada"}),
    ("attributes.plan in ('pro', 'team')", {"Ada", "Bob"}),
    ("attributes.plan != 'pro'", {"Bob", "Cy", "Dee", "Eve"}),
    ("attributes.plan is null", {"Dee", "Eve"}),
    ("attributes.plan is not null", {"Ada", "Bob", "Cy"}),
    ("attributes.plan like 'T%'", {"Bob"}),
    ("attributes.seats > 10", {"Ada", "Eve"}),
    ("attributes.seats <= 12", {"Ada", "Bob"}),
    ("attributes.seats = 7", {"Bob"}),
    ("attributes.seats = 100.50", {"Eve"}),
    ("attributes.seats in (7, 12)", {"Ada", "Bob"}),
    ("attributes.seats >= -1", {"Ada", "Bob", "Eve"}),
    ("not attributes.seats > 10", {"Bob", "Cy", "Dee"}),
    ("attributes.seats = '12'", {"Ada"}),
    ("attributes.seats = '7'", set()),
    ("attributes.seats = 'n/a'", {"Cy"}),
    ("attributes.vip = true", {"Ada", "Eve"}),
    ("attributes.vip = false", {"Bob"}),
    ("attributes.vip != true", {"Bob", "Cy", "Dee"}),
    ("attributes.renewal >= '2026-01-01'", {"Ada"}),
    ("attributes.note = 'O''Brien; drop'", {"Cy"}),
    ("attributes.Plan = 'pro'", set()),
    ("attributes.missing is null", EVERYONE),
    # tags
    ("tags contains 'vip'", {"Ada"}),
    ("tags contains 'VIP'", set()),
    ("not tags contains 'churned'", {"Ada", "Cy", "Dee", "Eve"}),
    ("tags contains 'customer' and not tags contains 'churned'", {"Ada"}),
    # booleans, ids and times
    ("do_not_bulk_email = true", {"Bob"}),
    ("do_not_bulk_email != true", {"Ada", "Cy", "Dee", "Eve"}),
    ("created_at = date '2026-01-31'", {"Bob"}),
    ("created_at != date '2026-01-31'", {"Ada", "Cy", "Dee", "Eve"}),
    ("created_at < date '2026-01-31'", {"Ada", "Dee"}),
    ("created_at <= date '2026-01-31'", {"Ada", "Bob", "Dee"}),
    ("created_at > date '2026-01-31'", {"Cy", "Eve"}),
    ("created_at >= date '2026-02-01'", {"Cy", "Eve"}),
    ("created_at >= timestamp '2026-02-01T01:00:00+01:00'", {"Cy", "Eve"}),
    ("created_at < timestamp '2026-01-15T10:00:00'", {"Dee"}),
    ("modified_at > date '2000-01-01'", EVERYONE),
    ("id > 0", EVERYONE),
    # precedence: not > and > or
    ("country = 'FR' or country = 'DE' and tags contains 'vip'", {"Ada", "Bob"}),
    ("(country = 'FR' or country = 'DE') and tags contains 'vip'", {"Ada"}),
    ("not country = 'DE' and tags contains 'customer'", {"Bob"}),
    ("not (country = 'DE' and tags contains 'customer')", {"Bob", "Cy", "Dee", "Eve"}),
    (
        "country = 'DE' and attributes.plan in ('pro','team') and not tags contains 'churned'",
        {"Ada"},
    ),
    # SQL inside literals is data
    ("first_name = '; drop table contacts; --'", set()),
    ("first_name = ''' or 1=1 --'", set()),
    ("attributes.plan = 'x'') or (''1''=''1'", set()),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[case[0] for case in CASES])
def test_query_matches_exactly(seeded: sa.Engine, text: str, expected: set[str]) -> None:
    assert matching(seeded, text) == expected
    # Every predicate is two-valued, so "not" is the complement.
    assert matching(seeded, f"not ({text})") == EVERYONE - expected


def test_sql_in_literals_leaves_every_table_intact(seeded: sa.Engine) -> None:
    def snapshot() -> dict[str, int]:
        with seeded.connect() as connection:
            names = sa.inspect(connection).get_table_names()
            return {
                name: connection.execute(
                    sa.select(sa.func.count()).select_from(sa.table(name))
                ).scalar_one()
                for name in names
            }

    before = snapshot()
    for text in [
        "first_name = '; drop table contacts; --'",
        "first_name = 'x''; delete from contacts; --'",
        "attributes.plan = '''); drop table contacts; --'",
        "tags contains '\"]''); drop table contacts; --'",
        "first_name like '%''; drop table contacts; --'",
    ]:
        assert matching(seeded, text) == set()
    assert snapshot() == before
    assert before["contacts"] == 5


def test_cached_statements_take_the_new_attribute_name(seeded: sa.Engine) -> None:
    # The same statement shape with another key must not reuse the first key's bound values.
    assert matching(seeded, "attributes.plan is null") == {"Dee", "Eve"}
    assert matching(seeded, "attributes.note is null") == {"Ada", "Bob", "Dee", "Eve"}
    assert matching(seeded, "attributes.seats > 10") == {"Ada", "Eve"}
    assert matching(seeded, "attributes.plan > 10") == set()


def test_list_respects_the_limit_and_id_order(seeded: sa.Engine) -> None:
    with db.session_scope(seeded) as session:
        found = contacts.list_contacts(session, query="country is not null", limit=2)
        assert [contact.first_name for contact in found] == ["Ada", "Bob"]
        assert contacts.count(session) == 5
        assert contacts.count(session, "country = 'DE'") == 2


def test_a_bad_query_raises_invalid_input_before_touching_the_database(
    seeded: sa.Engine,
) -> None:
    with db.session_scope(seeded) as session:
        with pytest.raises(errors.InvalidInput, match="query column 11: expected a value"):
            contacts.count(session, "country = ")
        assert session.scalar(sa.select(sa.func.count()).select_from(models.Contact)) == 5


@pytest.mark.parametrize(
    "text",
    [
        "email = 'Jo@München.DE'",
        "email = 'JO@XN--MNCHEN-3YA.de'",
        "email in ('nobody@example.org', 'jo@münchen.de')",
        "not email != 'jo@münchen.de'",
    ],
)
def test_an_address_matches_in_any_case_and_either_form_of_its_domain(
    engine: sa.Engine, text: str
) -> None:
    with db.session_scope(engine) as session:
        contacts.add(session, email="jo@münchen.de", first_name="Jo")
        contacts.add(session, email="jo@munchen.de", first_name="Other")
    assert matching(engine, text) == {"Jo"}
