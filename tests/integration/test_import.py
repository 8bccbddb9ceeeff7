"""CSV import: what is stored, what is refused, and what is counted."""

from __future__ import annotations

import io
from pathlib import Path

import email_validator
import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulkmail import contacts, db, errors, headers, importer, models


def run(
    engine: sa.Engine, text: str, *, strict: bool = False
) -> tuple[importer.ImportResult, list[importer.Rejected]]:
    rejected: list[importer.Rejected] = []
    with db.session_scope(engine) as session:
        result = importer.import_csv(
            session, io.StringIO(text, newline=""), strict=strict, on_rejected=rejected.append
        )
    return result, rejected


def stored(engine: sa.Engine) -> dict[str | None, dict[str, object]]:
    with db.session_scope(engine) as session:
        return {
            contact.email: contacts.as_dict(contact)
            for contact in contacts.list_contacts(session, limit=1000)
        }


def counts(result: importer.ImportResult) -> dict[str, int]:
    return {
        name: getattr(result, name)
        for name in ("rows", "inserted", "updated", "unchanged", "duplicates", "rejected")
    }


def test_bad_rows_are_reported_with_line_and_reason_and_the_rest_imported(
    engine: sa.Engine,
) -> None:
    text = (
        "email,first_name,last_name,country,do_not_bulk_email,plan\r\n"
        "ada@example.org,Ada,Lovelace,DE,no,pro\r\n"  # 2
        "not-an-address,X,,,,\r\n"  # 3
        ",NoMail,,,,\r\n"  # 4
        "bob@example.com,Bob\r\n"  # 5
        '"carl@example.com","Carl\nSecond",,,,\r\n'  # 6-7
        f"dee@example.org,Dee,,{'X' * 101},,\r\n"  # 8
        "eve@example.org,Eve,,,maybe,\r\n"  # 9
        "fay@example.org,Fay,,,,a\x00b\r\n"  # 10
        "gus@example.org\x00,Gus,,,,\r\n"  # 11
        "hal@example.org,Hal,,,,\r\n"  # 12
    )
    result, rejected = run(engine, text)
    assert [(r.line, r.reason.split(";")[0]) for r in rejected] == [
        (3, "contact address 'not-an-address' is not a valid address: "
            "An email address must have an @-sign."),
        (4, "has no email address"),
        (5, "has 2 fields but the header has 6"),
        (6, "first_name contains a LF character, which could inject a header"),
        (8, "country is longer than 100 characters"),
        (9, "do_not_bulk_email 'maybe' is not one of true/false, 1/0, yes/no"),
        (10, "attribute plan contains a NUL character"),
        (11, "contact address contains a NUL character, which could inject a header"),
    ]  # fmt: skip
    assert str(rejected[0]).startswith("line 3: contact address 'not-an-address'")
    assert counts(result) == {
        "rows": 10,
        "inserted": 2,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "rejected": 8,
    }
    assert set(stored(engine)) == {"ada@example.org", "hal@example.org"}


def test_fields_tags_and_attributes_are_stored(engine: sa.Engine) -> None:
    text = (
        "Email,First_Name,last_name,company,country,language,tags,do_not_bulk_email,plan,seats\n"
        " Ada@Example.ORG , Ada ,Lovelace,Analytical Engines,DE,de, vip ; customer;;vip ,YES,"
        "pro, 12 \n"
        "bob@example.com,,,,,,,,,\n"
    )
    result, rejected = run(engine, text)
    assert rejected == []
    assert result.inserted == 2
    assert stored(engine) == {
        "ada@example.org": {
            "id": stored(engine)["ada@example.org"]["id"],
            "email": "ada@example.org",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "company": "Analytical Engines",
            "country": "DE",
            "language": "de",
            "tags": ["customer", "vip"],
            "attributes": {"plan": "pro", "seats": "12"},
            "do_not_bulk_email": True,
        },
        "bob@example.com": {
            "id": stored(engine)["bob@example.com"]["id"],
            "email": "bob@example.com",
            "first_name": None,
            "last_name": None,
            "company": None,
            "country": None,
            "language": None,
            "tags": [],
            "attributes": {},
            "do_not_bulk_email": False,
        },
    }
    # Imported attributes are strings that the query language reads as numbers when asked to.
    with db.session_scope(engine) as session:
        assert contacts.count(session, "attributes.seats > 9 and tags contains 'vip'") == 1


def test_reimport_updates_merges_and_counts(engine: sa.Engine) -> None:
    first = (
        "email,first_name,company,tags,do_not_bulk_email,plan,seats\n"
        "ada@example.org,Ada,Acme,a;b,yes,pro,3\n"
        "bob@example.com,Bob,,,,team,\n"
    )
    result, _ = run(engine, first)
    assert (result.inserted, result.updated, result.unchanged) == (2, 0, 0)
    before = stored(engine)
    with db.session_scope(engine) as session:
        stamp = session.scalars(sa.select(models.Contact.modified_at)).all()

    result, _ = run(engine, first)
    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 2)
    assert stored(engine) == before
    with db.session_scope(engine) as session:
        assert session.scalars(sa.select(models.Contact.modified_at)).all() == stamp

    second = (
        "email,first_name,company,tags,do_not_bulk_email,plan,region\n"
        "ADA@example.org,,Globex,c; a ,no,,emea\n"
        "bob@example.com,Robert,,,,,\n"
        "cy@example.net,Cy,,,,,\n"
    )
    result, _ = run(engine, second)
    assert counts(result) == {
        "rows": 3,
        "inserted": 1,
        "updated": 2,
        "unchanged": 0,
        "duplicates": 0,
        "rejected": 0,
    }
    after = stored(engine)
    ada = after["ada@example.org"]
    # Empty cells keep what is stored, tags are added, attributes merged, an opt-out stays.
    assert ada["id"] == before["ada@example.org"]["id"]
    assert ada["first_name"] == "Ada"
    assert ada["company"] == "Globex"
    assert ada["tags"] == ["a", "b", "c"]
    assert ada["attributes"] == {"plan": "pro", "seats": "3", "region": "emea"}
    assert ada["do_not_bulk_email"] is True
    assert after["bob@example.com"]["first_name"] == "Robert"
    assert after["bob@example.com"]["attributes"] == {"plan": "team"}
    assert after["cy@example.net"]["do_not_bulk_email"] is False


def test_values_equal_to_the_stored_ones_leave_the_contact_unchanged(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contacts.add(
            session,
            email="zoe@example.org",
            first_name="Zoë",
            tags=["b", "a"],
            attributes={"city": "Zürich", "seats": 5},
        )
    text = "email,first_name,tags,city\nzoe@example.org,Zoë,a,Zürich\n"
    result, _ = run(engine, text)
    assert (result.updated, result.unchanged) == (0, 1)
    result, _ = run(engine, "email,seats\nzoe@example.org,5\n")
    assert (result.updated, result.unchanged) == (1, 0)
    assert stored(engine)["zoe@example.org"]["attributes"] == {"city": "Zürich", "seats": "5"}


def test_an_opt_out_in_the_file_is_applied_to_a_stored_contact(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contacts.add(session, email="ada@example.org", first_name="Ada")
    result, _ = run(engine, "email,do_not_bulk_email\nada@example.org,1\n")
    assert (result.updated, result.unchanged) == (1, 0)
    assert stored(engine)["ada@example.org"]["do_not_bulk_email"] is True


def test_a_later_row_for_the_same_address_wins(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contacts.add(session, email="old@example.org", first_name="Old")
    text = (
        "email,first_name,plan\n"
        "a@example.org,First,one\n"
        "old@example.org,Older,\n"
        "b@example.org,B,\n"
        "A@Example.org,Second,\n"
        "a@example.org,Third,three\n"
        "old@example.org,Newest,\n"
    )
    result, rejected = run(engine, text)
    assert rejected == []
    assert counts(result) == {
        "rows": 6,
        "inserted": 2,
        "updated": 1,
        "unchanged": 0,
        "duplicates": 3,
        "rejected": 0,
    }
    contacts_now = stored(engine)
    assert contacts_now["a@example.org"]["first_name"] == "Third"
    assert contacts_now["a@example.org"]["attributes"] == {"plan": "three"}
    assert contacts_now["old@example.org"]["first_name"] == "Newest"


def test_strict_mode_stops_at_the_first_bad_row_and_imports_nothing(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contacts.add(session, email="kept@example.org", first_name="Kept")
    text = (
        "email,first_name\n"
        "kept@example.org,Changed\n"
        "new@example.org,New\n"
        "broken@,Broken\n"
        "late@example.org,Late\n"
    )
    with pytest.raises(errors.InvalidInput) as raised:
        run(engine, text, strict=True)
    message = str(raised.value)
    assert message.startswith("line 4: contact address 'broken@' is not a valid address")
    assert message.endswith("; nothing was imported (strict mode)")
    assert stored(engine) == {
        "kept@example.org": {**stored(engine)["kept@example.org"], "first_name": "Kept"}
    }
    result, _ = run(engine, "email,first_name\nnew@example.org,New\n", strict=True)
    assert result.inserted == 1


def test_a_quoted_newline_is_data_and_line_numbers_stay_true(engine: sa.Engine) -> None:
    text = (
        "email,notes\n"
        'ada@example.org,"line one\nline two\r\nline three"\n'
        "bad,\n"
        'bob@example.com,"say ""hi"""\n'
    )
    result, rejected = run(engine, text)
    assert [r.line for r in rejected] == [5]
    assert result.inserted == 2
    contacts_now = stored(engine)
    assert contacts_now["ada@example.org"]["attributes"] == {
        "notes": "line one\nline two\r\nline three"
    }
    assert contacts_now["bob@example.com"]["attributes"] == {"notes": 'say "hi"'}


def test_a_file_with_a_byte_order_mark(engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes("email,first_name,city\r\nada@example.org,Ädä,Zürich\r\n".encode("utf-8-sig"))
    with db.session_scope(engine) as session:
        result = importer.import_file(session, path)
    assert result.inserted == 1
    ada = stored(engine)["ada@example.org"]
    assert ada["first_name"] == "Ädä"
    assert ada["attributes"] == {"city": "Zürich"}


def test_a_file_that_is_not_utf8_names_the_line(engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,first_name\nada@example.org,Ada\nbob@example.com,J\xf6rg\n")
    with pytest.raises(errors.InvalidInput, match=r"^line 3 is not UTF-8 text; convert"):
        with db.session_scope(engine) as session:
            importer.import_file(session, path)
    assert stored(engine) == {}


def test_a_missing_file_is_a_clear_error(engine: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="cannot read .*missing.csv: No such file"):
        with db.session_scope(engine) as session:
            importer.import_file(session, tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("first_name,plan\nAda,pro\n", "the header has no email column"),
        ("email,Plan Type\n", "header column 2 'Plan Type' cannot be an attribute name; use "),
        ("email,2fa\n", "header column 2 '2fa' cannot be an attribute name"),
        ("email,first_name,Email\n", "header columns 1 and 3 are both 'email'"),
        ("email,,plan\n", "header column 2 is empty"),
        ('email,plan\n"' + "x" * 140_000 + "\n", "line 2 is not CSV (field larger than"),
    ],
)
def test_header_and_file_problems_stop_the_import(
    engine: sa.Engine, text: str, message: str
) -> None:
    with pytest.raises(errors.InvalidInput) as raised:
        run(engine, text)
    assert str(raised.value).startswith(message), str(raised.value)
    assert stored(engine) == {}


def test_blank_rows_are_skipped_without_being_counted(engine: sa.Engine) -> None:
    result, rejected = run(engine, "\nemail,plan\n\n,\n  ,  \nada@example.org,pro\n\n")
    assert rejected == []
    assert counts(result) == {
        "rows": 1,
        "inserted": 1,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "rejected": 0,
    }


TRICKY_ADDRESSES = [
    "Plain@Example.com",
    "user+tag@sub.example.co.uk",
    "o'hara@example.ie",
    "a.b-c_d@ex-ample.org",
    "müller@example.de",
    "user@bücher.example",
    "user@xn--bcher-kva.example",
    "  padded@example.com  ",
    "a@b.test",
    "a@localhost",
    "a@example",
    "a..b@example.com",
    ".a@example.com",
    "a@-example.com",
    "a@ex--ample.com",
    "a@example.123",
    '"quoted name"@example.com',
    "a@[192.0.2.1]",
    "Alice <alice@example.com>",
    "a@b@example.com",
    "\u212a@example.com",
    "x" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 50 + ".com",
    "x" * 65 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 50 + ".com",
]


def test_every_imported_address_is_one_email_validator_accepts(engine: sa.Engine) -> None:
    text = "email\n" + "".join(f'"{a.replace(chr(34), chr(34) * 2)}"\n' for a in TRICKY_ADDRESSES)
    result, rejected = run(engine, text)
    assert result.inserted + result.rejected + result.duplicates == len(TRICKY_ADDRESSES)
    assert result.inserted >= 8
    for address in stored(engine):
        assert address is not None
        validated = email_validator.validate_email(address, check_deliverability=False)
        # Stored with the domain as its A-label (headers.normalize_address), lowercased.
        assert f"{validated.local_part}@{validated.ascii_domain}".lower() == address
    assert {r.line for r in rejected} >= {10, 11, 12, 13, 14, 15, 16, 17}


def _slow_path(value: str) -> str:
    return headers.normalize_address(value, field="contact address").lower()


ADDRESS_PARTS = st.sampled_from(
    ["a", "Z", "0", "_", "+", "-", ".", "@", "example", "com", "xn--", "--", "test", "localhost",
     "é", "\u212a", " ", "\n", "\x00", "'", '"', "[", "1", "co", "x" * 63, "y" * 64]
)  # fmt: skip


@settings(deadline=None, max_examples=2000)
@given(
    st.from_regex(
        r"[A-Za-z0-9_+.'-]{1,8}@([A-Za-z0-9-]{1,6}\.){0,3}[A-Za-z0-9]{1,6}", fullmatch=True
    )
    | st.lists(ADDRESS_PARTS, max_size=12).map("".join)
    | st.text(max_size=40)
)
@example("a@b.co")
@example("a@b.localhost")
@example("a@b--c.com")
@example("\u212aelvin@example.com")
@example("a@b.com\n")
def test_the_fast_address_check_agrees_with_email_validator(value: str) -> None:
    try:
        expected = _slow_path(value)
    except errors.InvalidInput:
        with pytest.raises(errors.InvalidInput):
            contacts.normalize_email(value)
        return
    assert contacts.normalize_email(value) == expected
