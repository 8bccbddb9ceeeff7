"""The recipient query language: a small filter over contacts, compiled to SQLAlchemy.

    country = 'DE' and attributes.plan in ('pro', 'team') and not tags contains 'churned'

Grammar (keywords are case-insensitive; precedence ``not`` > ``and`` > ``or``; parentheses group):

    query      := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" or ")" | predicate
    predicate  := field ("=" | "!=" | "<" | "<=" | ">" | ">=") value
                | field ["not"] "in" "(" value ("," value)* ")"
                | field ["not"] "like" 'pattern'
                | field "is" ["not"] "null"
                | "tags" "contains" 'tag'
    field      := email | first_name | last_name | company | country | language
                | do_not_bulk_email | created_at | modified_at | id | attributes.<name>
    value      := 'text' (write '' for a quote) | 12 | -3.5 | true | false
                | date 'YYYY-MM-DD' | timestamp 'YYYY-MM-DDTHH:MM:SS[+HH:MM]'

Meaning:

- Every predicate is true or false, never unknown: a comparison with a missing value (an empty
  field, an absent attribute, an attribute that cannot be read as the literal's type) is false.
  So ``!=``, ``not in`` and ``not like`` are exactly ``not (=)``, ``not (in)``, ``not (like)``,
  and they match contacts where the value is missing; ``not`` is the plain complement.
- Text compares by code point (binary), case-sensitively, except ``email``, whose literals are
  written as stored addresses are: lowercased, with the domain as its A-label (IDNA), so
  ``email = 'A@München.de'`` matches the contact ``a@münchen.de``. ``like`` is
  case-insensitive, with ``%`` and ``_`` as wildcards and ``\\`` to escape them.
- The literal's type decides how an attribute is read: a string compares string attributes; a
  number compares numeric attributes and strings written as plain decimal numbers (``12``,
  ``-0.5``; at most 40 characters, no exponent, no leading zeros or ``+``); ``true``/``false``
  compare boolean attributes and the strings "true"/"false" in any case.
  ``attributes.x is null`` means absent or JSON null. Attribute names are case-sensitive.
- ``created_at`` and ``modified_at`` compare with date or timestamp literals in UTC; a date
  stands for the whole day: ``created_at = date '2026-01-31'`` is any time that day,
  ``created_at > date '2026-01-31'`` is from February 1st on. A timestamp without an offset
  is UTC. To compare a date kept in an attribute, compare its ISO text:
  ``attributes.renewal >= '2026-01-31'``.

Values reach the database only as bound parameters; attribute names are restricted to
``[A-Za-z_][A-Za-z0-9_]*`` (or a keyword of the language) and are bound too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import difflib
from collections.abc import Callable
from typing import Any, Literal

import lark
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import elements

from bulkmail import errors, headers, models

MAX_LENGTH = 100_000
MAX_DEPTH = 50
MAX_LIST = 10_000
MAX_NUMBER_LENGTH = 40

_GRAMMAR = r"""
    ?start: or_
    ?or_: and_ (OR and_)*
    ?and_: unary (AND unary)*
    ?unary: NOT unary                        -> negation
          | "(" or_ ")"
          | predicate
    ?predicate: field COMPARATOR value       -> compare
              | field IN list                -> in_
              | field NOT IN list            -> not_in
              | field LIKE STRING            -> like
              | field NOT LIKE STRING        -> not_like
              | field IS NULL                -> is_null
              | field IS NOT NULL            -> is_not_null
              | field CONTAINS value         -> contains
    list: "(" value ("," value)* ")"
    field: NAME ("." key)?
    ?key: NAME | OR | AND | NOT | IN | LIKE | IS | NULL | CONTAINS | TRUE | FALSE | DATE | TIMESTAMP
    ?value: STRING
          | NUMBER
          | TRUE
          | FALSE
          | DATE STRING                      -> date
          | TIMESTAMP STRING                 -> timestamp

    OR: "or"i
    AND: "and"i
    NOT: "not"i
    IN: "in"i
    LIKE: "like"i
    IS: "is"i
    NULL: "null"i
    CONTAINS: "contains"i
    TRUE: "true"i
    FALSE: "false"i
    DATE: "date"i
    TIMESTAMP: "timestamp"i
    COMPARATOR: "<=" | ">=" | "!=" | "=" | "<" | ">"
    NAME: /[A-Za-z_][A-Za-z0-9_]*/
    STRING: /'(?:[^']|'')*'/
    NUMBER: /-?[0-9]+(\.[0-9]+)?/
    %ignore /[ \t\r\n]+/
"""

# The basic lexer keeps keywords reserved everywhere, so `and or x` is an error at `or`,
# not a field named "or"; after "attributes." the grammar takes keywords as names.
_PARSER = lark.Lark(_GRAMMAR, parser="lalr", lexer="basic")

Kind = Literal["text", "number", "bool", "time"]

# The contact fields a query may name, by the kind of literal they compare with.
_FIELDS: dict[str, Kind] = {
    "email": "text",
    "first_name": "text",
    "last_name": "text",
    "company": "text",
    "country": "text",
    "language": "text",
    "do_not_bulk_email": "bool",
    "created_at": "time",
    "modified_at": "time",
    "id": "number",
}
_NULLABLE = {"email", "first_name", "last_name", "company", "country", "language"}


def parse(text: str) -> sa.ColumnElement[bool]:
    """The WHERE clause over ``models.Contact`` that ``text`` describes.

    Raises ``errors.InvalidInput`` naming the column (and line, for a query of several lines)
    and what was expected there or what is wrong.
    """
    if len(text) > MAX_LENGTH:
        raise errors.InvalidInput(
            f"the query is {len(text)} characters long; shorten it to at most {MAX_LENGTH}"
        )
    if not text.strip():
        raise errors.InvalidInput("the query is empty; write a condition like country = 'DE'")
    try:
        tree = _PARSER.parse(text)
    except lark.exceptions.UnexpectedInput as error:
        raise errors.InvalidInput(_syntax_message(text, error)) from None
    _check_depth(tree)
    return _Compiler(text).condition(tree)


def known_fields() -> list[str]:
    """The field names a query may use, as they are shown to users."""
    return [*sorted(_FIELDS), "tags", "attributes.<name>"]


# --- syntax errors ---------------------------------------------------------------------------

_VALUE_TERMINALS = {"STRING", "NUMBER", "TRUE", "FALSE", "DATE", "TIMESTAMP"}
_OPERATOR_TERMINALS = {"COMPARATOR", "IN", "LIKE", "IS", "CONTAINS"}
_DESCRIPTIONS = {
    "NAME": "a field name",
    "STRING": "a 'quoted string'",
    "NUMBER": "a number",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "DOT": "'.'",
    "COMPARATOR": "a comparison (=, !=, <, <=, >, >=)",
    "$END": "the end of the query",
}


def _where(text: str, line: int, column: int) -> str:
    return f"query line {line} column {column}" if "\n" in text else f"query column {column}"


def _shown(token: lark.Token) -> str:
    if token.type == "$END":
        return "the end of the query"
    value = str(token)
    return repr(value if len(value) <= 30 else value[:27] + "...")


def _expected(names: set[str]) -> str:
    if names >= _VALUE_TERMINALS:
        return "a value ('text', 42, true, false or date '2026-01-31')"
    if names >= _OPERATOR_TERMINALS:
        return "an operator (=, !=, <, <=, >, >=, in, not in, like, is null, contains)"
    if "NAME" in names and not names & {"RPAR", "$END", "COMMA"}:
        return "a field name, 'not' or '('" if names >= {"NOT", "LPAR"} else "a field name"
    words = sorted({_DESCRIPTIONS.get(name, repr(name.lower())) for name in names})
    if not words:
        return "nothing more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _accepted(prefix: str) -> str:
    """What the grammar accepts after ``prefix``, which parses up to its end."""
    try:
        interactive = _PARSER.parse_interactive(prefix)
        interactive.exhaust_lexer()
        accepted: set[str] = interactive.accepts()  # type: ignore[no-untyped-call]
        return _expected(accepted)
    except lark.exceptions.LarkError:
        return "something else"


def _previous_token(text: str, position: int) -> lark.Token | None:
    previous = None
    try:
        for token in _PARSER.lex(text):
            if token.start_pos is None or token.start_pos >= position:
                break
            previous = token
    except lark.exceptions.LarkError:
        pass  # the text only lexes up to the error; the tokens before it are what we need
    return previous


def _syntax_message(text: str, error: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        where = _where(text, error.line, error.column)
        position = error.pos_in_stream or 0
        char = text[position]
        if char == "'":
            return (
                f"{where}: the string that starts here is not closed; "
                "end it with ' (write '' for a quote inside it)"
            )
        if char == '"':
            return f"{where}: strings take single quotes, like 'this'"
        expected = _accepted(text[:position])
        return f"{where}: unexpected character {char!r}; expected {expected}"
    assert isinstance(error, lark.exceptions.UnexpectedToken)
    token = error.token
    if token.type == "$END":
        lines = text.split("\n")
        line, column, position = len(lines), len(lines[-1]) + 1, len(text)
    else:
        line, column, position = token.line or 1, token.column or 1, token.start_pos or 0
    previous = _previous_token(text, position)
    after = f" after {_shown(previous)}" if previous is not None else ""
    expected = _expected(set(error.accepts or error.expected))
    return f"{_where(text, line, column)}: expected {expected}{after}, found {_shown(token)}"


def _check_depth(tree: lark.Tree[lark.Token]) -> None:
    # Compiling recurses once per level (here and in SQLAlchemy): bound it before we start.
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise errors.InvalidInput(
                f"the query nests more than {MAX_DEPTH} levels deep (parentheses and 'not'); "
                "simplify it"
            )
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


# --- attributes, tags and text order -----------------------------------------------------------

_NUMERIC_TEXT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"


def _bound(value: object, type_: sa.types.TypeEngine[Any]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, value, type_=type_)


def _attribute(key: str) -> tuple[sa.ColumnElement[str], sa.ColumnElement[str]]:
    """The attribute's JSON type name and its value as text (NULL when absent)."""
    bound = _bound(key, sa.Text())
    attributes = models.Contact.attributes
    kind = sa.func.jsonb_typeof(attributes.op("->")(bound))
    return kind, attributes.op("->>", return_type=sa.Text())(bound)


def _attribute_text(key: str) -> sa.ColumnElement[str]:
    """The attribute's value if it is a JSON string, else NULL."""
    kind, text = _attribute(key)
    return sa.case((kind == "string", text))


def _attribute_number(key: str) -> sa.ColumnElement[decimal.Decimal]:
    """The attribute as a number: a JSON number or a string that spells a plain decimal."""
    kind, text = _attribute(key)
    # Only cast what is known to be numeric: a cast of other text would fail the whole query.
    numeric_text = sa.and_(
        kind == "string",
        sa.func.length(text) <= MAX_NUMBER_LENGTH,
        text.bool_op("~")(_NUMERIC_TEXT),
    )
    return sa.case(
        (kind == "number", sa.cast(text, sa.Numeric())),
        (numeric_text, sa.cast(text, sa.Numeric())),
    )


def _attribute_boolean(key: str) -> sa.ColumnElement[str]:
    """'true' or 'false' for a JSON boolean, the lowercased text of a string, else NULL."""
    kind, text = _attribute(key)
    return sa.case((kind == "boolean", text), (kind == "string", sa.func.lower(text)))


def _attribute_raw(key: str) -> sa.ColumnElement[str]:
    """The attribute as SQL text of any JSON type: NULL when absent or JSON null."""
    return _attribute(key)[1]


def _binary(value: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """Text ordered by code point, whatever the database's collation."""
    return sa.collate(value, "C")


def _tags_contain(tag: str) -> sa.ColumnElement[bool]:
    tags = models.Contact.tags
    return elements.Grouping(tags.bool_op("@>")(_bound([tag], postgresql.JSONB())))


# --- the tree to SQLAlchemy --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Value:
    kind: Literal["text", "number", "bool", "day", "instant"]
    value: Any
    token: lark.Token


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Field:
    name: str
    attribute: str | None
    token: lark.Token


_OPERATORS: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}

_KIND_HINTS = {
    "text": "text; compare it with a 'quoted string'",
    "number": "a number; compare it with a number like 42",
    "bool": "true or false; compare it with = true or = false",
    "time": "a time; compare it with date '2026-01-31' or timestamp '2026-01-31T09:00:00Z'",
}


def _two_valued(
    operand: sa.ColumnElement[Any], condition: sa.ColumnElement[bool], nullable: bool
) -> sa.ColumnElement[bool]:
    """``condition`` made false where ``operand`` is NULL, so that ``not`` is a complement."""
    if not nullable:
        return condition
    if isinstance(operand, orm.QueryableAttribute):
        # Keeps the plain comparison visible to the planner, so an index on the column can serve.
        return sa.and_(operand.is_not(None), condition)
    # Attribute and collated expressions cannot use an index anyway: the shorter SQL wins.
    return sa.func.coalesce(condition, sa.false(), type_=sa.Boolean())


def _stored_address(text: str) -> str:
    """An address literal as contacts store theirs (lowercased, the domain an A-label), so that
    ``email = 'A@München.de'`` finds ``a@xn--mnchen-3ya.de``; other text is only lowercased."""
    try:
        return headers.normalize_address(text).lower()
    except errors.InvalidInput:
        return text.lower()


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, token: lark.Token, message: str) -> errors.InvalidInput:
        return errors.InvalidInput(
            f"{_where(self.text, token.line or 1, token.column or 1)}: {message}"
        )

    def condition(self, node: lark.Tree[lark.Token]) -> sa.ColumnElement[bool]:
        rule = node.data
        parts = [child for child in node.children if isinstance(child, lark.Tree)]
        if rule == "or_":
            return sa.or_(*(self.condition(part) for part in parts))
        if rule == "and_":
            return sa.and_(*(self.condition(part) for part in parts))
        if rule == "negation":
            return sa.not_(self.condition(parts[0]))
        field = self.field(parts[0])
        tokens = [child for child in node.children if isinstance(child, lark.Token)]
        if rule == "compare":
            operator = str(tokens[0])
            value = self.value(node.children[2])
            if operator == "!=":
                return sa.not_(self.compare(field, "=", value))
            return self.compare(field, operator, value)
        if rule in ("in_", "not_in"):
            values = [self.value(child) for child in parts[1].children]
            matched = self.member(field, values)
            return sa.not_(matched) if rule == "not_in" else matched
        if rule in ("like", "not_like"):
            matched = self.like(field, self.value(tokens[-1]))
            return sa.not_(matched) if rule == "not_like" else matched
        if rule in ("is_null", "is_not_null"):
            missing = self.is_null(field)
            return sa.not_(missing) if rule == "is_not_null" else missing
        assert rule == "contains", rule
        return self.contains(field, self.value(node.children[2]))

    def field(self, node: lark.Tree[lark.Token]) -> _Field:
        name_token = node.children[0]
        assert isinstance(name_token, lark.Token)
        name = str(name_token).lower()
        key = node.children[1] if len(node.children) > 1 else None
        if name == "attributes":
            if key is None:
                raise self.fail(name_token, "name the attribute after a dot, like attributes.plan")
            return _Field(name=f"attributes.{key}", attribute=str(key), token=name_token)
        if key is not None:
            raise self.fail(name_token, f"{name} has no parts; only attributes.<name> takes a dot")
        if name not in _FIELDS and name != "tags":
            close = difflib.get_close_matches(name, [*_FIELDS, "tags", "attributes"], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.fail(
                name_token,
                f"unknown field {name!r}{hint}; known fields: {', '.join(known_fields())}",
            )
        return _Field(name=name, attribute=None, token=name_token)

    def value(self, node: lark.Tree[lark.Token] | lark.Token) -> _Value:
        if isinstance(node, lark.Tree):
            keyword, literal = node.children
            assert isinstance(keyword, lark.Token)
            assert isinstance(literal, lark.Token)
            text = self.string(literal)
            if node.data == "date":
                try:
                    return _Value(kind="day", value=dt.date.fromisoformat(text), token=keyword)
                except ValueError:
                    raise self.fail(
                        literal, f"{text!r} is not a date; write date 'YYYY-MM-DD'"
                    ) from None
            try:
                instant = dt.datetime.fromisoformat(text)
            except ValueError:
                raise self.fail(
                    literal,
                    f"{text!r} is not a timestamp; write timestamp '2026-01-31T09:30:00+01:00'",
                ) from None
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=dt.UTC)
            return _Value(kind="instant", value=instant.astimezone(dt.UTC), token=keyword)
        if node.type == "STRING":
            return _Value(kind="text", value=self.string(node), token=node)
        if node.type == "NUMBER":
            if len(node) > MAX_NUMBER_LENGTH:
                raise self.fail(node, f"the number is longer than {MAX_NUMBER_LENGTH} characters")
            return _Value(kind="number", value=decimal.Decimal(str(node)), token=node)
        assert node.type in ("TRUE", "FALSE"), node.type
        return _Value(kind="bool", value=node.type == "TRUE", token=node)

    def string(self, token: lark.Token) -> str:
        text = str(token)[1:-1].replace("''", "'")
        if "\x00" in text:
            raise self.fail(token, "the string contains a NUL character; remove it")
        return text

    def operand(self, field: _Field, value: _Value) -> tuple[sa.ColumnElement[Any], bool]:
        """The SQL value ``value`` is compared with, and whether that may be NULL."""
        if field.name == "tags":
            raise self.fail(field.token, "tags only take contains, like tags contains 'vip'")
        if field.attribute is not None:
            if value.kind == "text":
                return _attribute_text(field.attribute), True
            if value.kind == "number":
                return _attribute_number(field.attribute), True
            if value.kind == "bool":
                return _attribute_boolean(field.attribute), True
            raise self.fail(
                value.token,
                "attributes hold text, numbers and booleans; compare a date kept in an "
                f"attribute as ISO text, like {field.name} >= '2026-01-31'",
            )
        kind = _FIELDS[field.name]
        accepted = {"text": ("text",), "number": ("number",), "bool": ("bool",)}.get(
            kind, ("day", "instant")
        )
        if value.kind not in accepted:
            raise self.fail(value.token, f"{field.name} is {_KIND_HINTS[kind]}")
        column: sa.ColumnElement[Any] = getattr(models.Contact, field.name)
        return column, field.name in _NULLABLE

    def literal(self, field: _Field, value: _Value) -> object:
        if value.kind == "bool" and field.attribute is not None:
            return "true" if value.value else "false"
        if value.kind == "text" and field.name == "email":
            return _stored_address(str(value.value))
        return value.value

    def compare(self, field: _Field, operator: str, value: _Value) -> sa.ColumnElement[bool]:
        operand, nullable = self.operand(field, value)
        if value.kind == "bool" and operator != "=":
            raise self.fail(value.token, "true and false only compare with = and !=")
        if value.kind == "day":
            return self.compare_day(operand, operator, value.value)
        literal = self.literal(field, value)
        if value.kind == "text" and operator != "=":
            operand = _binary(operand)
        if value.kind == "number":
            literal = _bound(literal, sa.Numeric())
        return _two_valued(operand, _OPERATORS[operator](operand, literal), nullable)

    @staticmethod
    def compare_day(
        column: sa.ColumnElement[Any], operator: str, day: dt.date
    ) -> sa.ColumnElement[bool]:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        end = start + dt.timedelta(days=1)
        if operator == "=":
            return sa.and_(column >= start, column < end)
        bounds = {"<": start, "<=": end, ">": end, ">=": start}
        return column < bounds[operator] if operator in ("<", "<=") else column >= bounds[operator]

    def member(self, field: _Field, values: list[_Value]) -> sa.ColumnElement[bool]:
        if len(values) > MAX_LIST:
            raise self.fail(
                values[MAX_LIST].token, f"the list has more than {MAX_LIST} values; split it"
            )
        first = values[0]
        if first.kind not in ("text", "number"):
            raise self.fail(first.token, "in (...) takes strings or numbers")
        for value in values[1:]:
            if value.kind != first.kind:
                raise self.fail(
                    value.token, "the list mixes kinds of values; make them all strings or numbers"
                )
        operand, nullable = self.operand(field, first)
        literals = [self.literal(field, value) for value in values]
        # Numbers bind as NUMERIC whatever the column.
        compared = sa.type_coerce(operand, sa.Numeric()) if first.kind == "number" else operand
        return _two_valued(operand, compared.in_(literals), nullable)

    def like(self, field: _Field, pattern: _Value) -> sa.ColumnElement[bool]:
        operand, nullable = self.operand(field, pattern)
        condition = operand.ilike(str(pattern.value), escape="\\")
        return _two_valued(operand, condition, nullable)

    def is_null(self, field: _Field) -> sa.ColumnElement[bool]:
        if field.name == "tags":
            raise self.fail(field.token, "tags only take contains, like tags contains 'vip'")
        if field.attribute is not None:
            return _attribute_raw(field.attribute).is_(None)
        column: sa.ColumnElement[Any] = getattr(models.Contact, field.name)
        return column.is_(None)

    def contains(self, field: _Field, value: _Value) -> sa.ColumnElement[bool]:
        if field.name != "tags":
            raise self.fail(
                field.token,
                f"contains only applies to tags; for {field.name} use = or like",
            )
        if value.kind != "text":
            raise self.fail(value.token, "tags are text; write tags contains 'vip'")
        return _tags_contain(str(value.value))
