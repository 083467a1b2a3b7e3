"""Audience rules: a small, safe expression language compiled to parameterized SQL.

A campaign file says who it is for in one line a marketer can read and a data engineer can
review, for example::

    orders_count > 3 and last_order_date < run_date - 120 days and not is_email_subscribed

The rule is tokenized and parsed here (recursive descent) into a typed tree, checked
against the documented columns of `marts.customer_features` and their types, and compiled
to a `psycopg.sql.Composable` over the table alias `f`. Column names become quoted
identifiers, every literal becomes a named parameter, and the run date is the parameter
`%(run_date)s` the caller supplies, so no text of the rule ever reaches SQL as SQL.
Anything outside the grammar (semicolons, comments, casts, function calls, subqueries,
quoted identifiers) is a `RuleError` naming the problem and its position.

Grammar (keywords are case-insensitive)::

    rule        := or_expr END
    or_expr     := and_expr ("or" and_expr)*
    and_expr    := not_expr ("and" not_expr)*
    not_expr    := "not" not_expr | "(" or_expr ")" | predicate
    predicate   := value                                  -- a boolean value
                 | value cmp_op value                     -- = != <> < <= > >=
                 | value ["not"] "in" "(" value ("," value)* ")"
                 | value ["not"] "between" value "and" value
                 | column "is" ["not"] "null"
    value       := primary (("+" | "-") INTEGER unit)*   -- only on dates and timestamps
    primary     := column | "run_date" | "date" STRING | NUMBER | "-" NUMBER
                 | STRING | "true" | "false"
    unit        := day[s] | week[s] | month[s] | year[s]

The full description, with examples and the error messages, is docs/campaign-rules.md.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from psycopg import sql

FEATURES_MODEL = "customer_features"
RUN_DATE_PARAM = "run_date"

# Long enough for any rule a person writes; bounded so a hostile file cannot make the
# parser recurse or allocate without limit.
MAX_RULE_LENGTH = 4000
MAX_NESTING = 40
# The parse tree's size: tokens in the whole audience expression (a long `in` list of
# 300 values fits); more makes a statement PostgreSQL plans slowly for every campaign.
MAX_RULE_TOKENS = 1000
# Date arithmetic stays within a century, far from PostgreSQL's integer and date limits.
MAX_SHIFT_YEARS = 100
_MAX_SHIFT = {"days": 366 * MAX_SHIFT_YEARS, "months": 12 * MAX_SHIFT_YEARS}

NUMBER, TEXT, BOOLEAN, DATE, TIMESTAMP = "number", "text", "boolean", "date", "timestamp"
_TEMPORAL = frozenset({DATE, TIMESTAMP})
_ORDERED = frozenset({NUMBER, DATE, TIMESTAMP})

_TYPE_KINDS = {
    "smallint": NUMBER,
    "integer": NUMBER,
    "int": NUMBER,
    "int2": NUMBER,
    "int4": NUMBER,
    "int8": NUMBER,
    "bigint": NUMBER,
    "numeric": NUMBER,
    "decimal": NUMBER,
    "real": NUMBER,
    "float4": NUMBER,
    "float8": NUMBER,
    "double precision": NUMBER,
    "text": TEXT,
    "varchar": TEXT,
    "character varying": TEXT,
    "char": TEXT,
    "character": TEXT,
    "bpchar": TEXT,
    "boolean": BOOLEAN,
    "bool": BOOLEAN,
    "date": DATE,
    "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMP,
    "timestamp with time zone": TIMESTAMP,
    "timestamp without time zone": TIMESTAMP,
}

_COMPARISON_SQL = {
    "=": "=",
    "!=": "<>",
    "<>": "<>",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
}
_UNITS = {
    "day": ("days", 1),
    "days": ("days", 1),
    "week": ("days", 7),
    "weeks": ("days", 7),
    "month": ("months", 1),
    "months": ("months", 1),
    "year": ("months", 12),
    "years": ("months", 12),
}
_KEYWORDS = frozenset(
    {"and", "or", "not", "in", "between", "is", "null", "true", "false", "date", "run_date"}
)
# Words that only make sense as SQL: named in the error, so an attempt reads as what it is.
_SQL_WORDS = frozenset(
    {
        "select",
        "from",
        "where",
        "union",
        "insert",
        "update",
        "delete",
        "drop",
        "create",
        "alter",
        "truncate",
        "grant",
        "revoke",
        "copy",
        "execute",
        "exec",
        "with",
        "case",
        "when",
        "cast",
        "exists",
        "like",
        "ilike",
        "similar",
        "any",
        "all",
        "having",
        "limit",
        "order",
        "group",
        "join",
    }
)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*", re.IGNORECASE | re.ASCII)
_NUMBER = re.compile(r"\d+(\.\d+)?", re.ASCII)
_OPERATORS = ("<=", ">=", "!=", "<>", "=", "<", ">", "+", "-")


class RuleError(ValueError):
    """A rule that is not in the language or does not type-check; says what and where."""

    def __init__(self, message: str, position: int | None = None):
        self.problem = message
        self.position = position
        where = "" if position is None else f" at position {position + 1}"
        super().__init__(f"{message}{where}")


@dataclass(frozen=True)
class CompiledRule:
    sql: sql.Composable  # boolean SQL over the alias, e.g. f.orders_count > %(rule_0)s
    params: dict[str, object]  # every literal is a parameter, never inlined
    columns: frozenset[str]  # columns the rule reads


def column_kind(data_type: str) -> str | None:
    """The rule language's kind (number, text, boolean, date, timestamp) of a SQL type."""
    base = re.sub(r"\s*\(.*\)\s*$", "", data_type.strip().lower())
    return _TYPE_KINDS.get(base)


def feature_columns() -> dict[str, str]:
    """The contracted columns of `marts.customer_features` and their SQL types.

    Read from the model's enforced dbt contract (`data_type:` of each column), the one
    place they are declared; dbt holds the SQL to it.
    """
    return dict(_feature_columns())


@functools.cache
def _feature_columns() -> tuple[tuple[str, str], ...]:
    from winback.warehouse import contracts

    return tuple(contracts.contracted_columns(FEATURES_MODEL).items())


# --- tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # word, number, string, op, (, ), ",", end
    text: str
    position: int
    value: object = None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\r\n":
            i += 1
            continue
        if text.startswith("--", i):
            raise RuleError("comments ('--') are not allowed", i)
        if text.startswith("/*", i) or text.startswith("*/", i):
            raise RuleError("comments ('/* */') are not allowed", i)
        if text.startswith("::", i):
            raise RuleError("casts ('::') are not allowed", i)
        if char == ";":
            raise RuleError("';' is not allowed: a rule is one expression", i)
        if char == '"':
            raise RuleError("quoted identifiers are not allowed: write the column name", i)
        if char in "(),":
            tokens.append(_Token(char, char, i))
            i += 1
            continue
        if char == "'":
            i = _read_string(text, i, tokens)
            continue
        if char.isascii() and char.isdigit():
            match = _NUMBER.match(text, i)
            end = match.end()
            if end < len(text) and (text[end].isalnum() or text[end] in "_.'"):
                raise RuleError(
                    f"malformed number {text[i : end + 1]!r} (write digits with an optional "
                    f"decimal part, and a space before a word)",
                    i,
                )
            literal = match.group()
            value = Decimal(literal) if match.group(1) else int(literal)
            tokens.append(_Token("number", literal, i, value))
            i = end
            continue
        match = _IDENTIFIER.match(text, i) if char.isascii() else None
        if match:
            tokens.append(_Token("word", match.group().lower(), i))
            i = match.end()
            continue
        operator = next((op for op in _OPERATORS if text.startswith(op, i)), None)
        if operator:
            tokens.append(_Token("op", operator, i))
            i += len(operator)
            continue
        raise RuleError(f"unexpected character {char!r}", i)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _read_string(text: str, start: int, tokens: list[_Token]) -> int:
    """A 'quoted' literal; '' inside stands for one quote. Returns the index after it."""
    parts = []
    i = start + 1
    while True:
        end = text.find("'", i)
        if end < 0:
            raise RuleError("unterminated string literal", start)
        parts.append(text[i:end])
        if text.startswith("''", end):
            parts.append("'")
            i = end + 2
            continue
        value = "".join(parts)
        if any(ord(c) < 32 and c not in "\t" for c in value) or "\x00" in value:
            raise RuleError("control characters are not allowed in a string", start)
        tokens.append(_Token("string", text[start : end + 1], start, value))
        return end + 1


# --- typed tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str
    position: int


@dataclass(frozen=True)
class _Literal:
    value: object
    kind: str
    position: int


@dataclass(frozen=True)
class _RunDate:
    position: int
    kind: str = DATE


@dataclass(frozen=True)
class _Shift:
    """A date moved by a chain of shifts (`run_date - 1 year + 2 days`), kept flat: a
    chain of any length compiles and renders without recursion."""

    base: object
    steps: tuple[tuple[str, str, int], ...]  # (+ or -, days or months, amount)
    position: int

    @property
    def kind(self) -> str:
        return self.base.kind


@dataclass(frozen=True)
class _Compare:
    operator: str
    left: object
    right: object


@dataclass(frozen=True)
class _In:
    operand: object
    items: tuple
    negated: bool


@dataclass(frozen=True)
class _Between:
    operand: object
    low: object
    high: object
    negated: bool


@dataclass(frozen=True)
class _IsNull:
    column: _Column
    negated: bool


@dataclass(frozen=True)
class _Truth:
    value: object  # a boolean column or literal used as a condition


@dataclass(frozen=True)
class _Not:
    operand: object


@dataclass(frozen=True)
class _Junction:
    operator: str  # and / or
    operands: tuple


# --- parser -------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, columns: Mapping[str, str]):
        self.tokens = _tokenize(text)
        self.index = 0
        self.columns = columns
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _is_word(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.text in words

    def _expect_word(self, word: str) -> None:
        if not self._is_word(word):
            raise RuleError(
                f"expected '{word}', found {_describe(self.token)}", self.token.position
            )
        self._advance()

    def _expect(self, kind: str) -> _Token:
        if self.token.kind != kind:
            raise RuleError(
                f"expected '{kind}', found {_describe(self.token)}", self.token.position
            )
        return self._advance()

    def parse(self):
        tree = self._or()
        if self.token.kind != "end":
            raise RuleError(
                f"expected 'and', 'or' or the end of the rule, found {_describe(self.token)}",
                self.token.position,
            )
        return tree

    def _or(self):
        operands = [self._and()]
        while self._is_word("or"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else _Junction("or", tuple(operands))

    def _and(self):
        operands = [self._not()]
        while self._is_word("and"):
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else _Junction("and", tuple(operands))

    def _not(self):
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise RuleError(f"the rule nests deeper than {MAX_NESTING} levels", self.token.position)
        try:
            if self._is_word("not"):
                self._advance()
                return _Not(self._not())
            if self.token.kind == "(":
                self._advance()
                if self._is_word("select", "with"):
                    raise RuleError("subqueries are not allowed", self.token.position)
                inner = self._or()
                self._expect(")")
                return inner
            return self._predicate()
        finally:
            self.depth -= 1

    def _predicate(self):
        start = self.token
        left = self._value()
        if self.token.kind == "op" and self.token.text in _COMPARISON_SQL:
            operator = self._advance()
            right = self._value()
            _check_comparable(left, right, operator)
            return _Compare(operator.text, left, right)
        negated = False
        if self._is_word("not"):
            negated = True
            self._advance()
            if not self._is_word("in", "between"):
                raise RuleError(
                    f"expected 'in' or 'between' after 'not', found {_describe(self.token)}",
                    self.token.position,
                )
        if self._is_word("in"):
            in_token = self._advance()
            self._expect("(")
            if self._is_word("select", "with"):
                raise RuleError("subqueries are not allowed", self.token.position)
            items = [self._value()]
            while self.token.kind == ",":
                self._advance()
                items.append(self._value())
            self._expect(")")
            for item in items:
                _check_comparable(left, item, in_token)
            return _In(left, tuple(items), negated)
        if self._is_word("between"):
            between = self._advance()
            low = self._value()
            self._expect_word("and")
            high = self._value()
            for bound in (low, high):
                _check_comparable(left, bound, between, ordered=True)
            return _Between(left, low, high, negated)
        if self._is_word("is"):
            is_token = self._advance()
            is_not = False
            if self._is_word("not"):
                self._advance()
                is_not = True
            self._expect_word("null")
            if not isinstance(left, _Column):
                raise RuleError("'is null' applies to a column", is_token.position)
            return _IsNull(left, is_not)
        if left.kind != BOOLEAN:
            raise RuleError(
                f"{_describe(start)} is a {left.kind}, not a condition: compare it "
                f"(=, !=, <, <=, >, >=, in, between, is null)",
                start.position,
            )
        return _Truth(left)

    def _value(self):
        start = self.token.position
        value = self._primary()
        steps: list[tuple[str, str, int]] = []
        while self.token.kind == "op" and self.token.text in "+-":
            operator = self._advance()
            if value.kind not in _TEMPORAL:
                raise RuleError(
                    f"arithmetic is only for dates (run_date - 90 days); "
                    f"this side is a {value.kind}",
                    operator.position,
                )
            amount = self.token
            if amount.kind != "number" or not isinstance(amount.value, int):
                raise RuleError(
                    f"expected a whole number of days, weeks, months or years after "
                    f"'{operator.text}', found {_describe(amount)}",
                    amount.position,
                )
            self._advance()
            unit = self.token
            if unit.kind != "word" or unit.text not in _UNITS:
                raise RuleError(
                    f"expected days, weeks, months or years after {amount.text}, "
                    f"found {_describe(unit)}",
                    unit.position,
                )
            self._advance()
            field, factor = _UNITS[unit.text]
            if amount.value * factor > _MAX_SHIFT[field]:
                raise RuleError(
                    f"{amount.text} {unit.text} is more than {MAX_SHIFT_YEARS} years",
                    amount.position,
                )
            steps.append((operator.text, field, amount.value * factor))
            # The whole chain, not each step, stays within the bound: 80 x "- 100 years"
            # would leave PostgreSQL's timestamp range at run time.
            reach = sum(n * (30.5 if f == "months" else 1) for _, f, n in steps)
            if reach > _MAX_SHIFT["days"]:
                raise RuleError(
                    f"the date shifts add up to more than {MAX_SHIFT_YEARS} years",
                    amount.position,
                )
        return _Shift(value, tuple(steps), start) if steps else value

    def _primary(self):
        token = self.token
        if token.kind == "number":
            self._advance()
            return _Literal(token.value, NUMBER, token.position)
        if (
            token.kind == "op"
            and token.text == "-"
            and self.tokens[self.index + 1].kind == "number"
        ):
            self._advance()
            number = self._advance()
            return _Literal(-number.value, NUMBER, token.position)
        if token.kind == "string":
            self._advance()
            return _Literal(token.value, TEXT, token.position)
        if token.kind != "word":
            raise RuleError(
                f"expected a column or a value, found {_describe(token)}", token.position
            )
        word = token.text
        if self.tokens[self.index + 1].kind == "(":
            raise RuleError(f"function calls are not allowed ({word}(...))", token.position)
        if word in ("true", "false"):
            self._advance()
            return _Literal(word == "true", BOOLEAN, token.position)
        if word == "run_date":
            self._advance()
            return _RunDate(token.position)
        if word == "date":
            self._advance()
            literal = self.token
            if literal.kind != "string":
                raise RuleError(
                    f"expected a date like date '2026-01-31', found {_describe(literal)}",
                    literal.position,
                )
            self._advance()
            try:
                day = date.fromisoformat(literal.value)
            except ValueError:
                raise RuleError(
                    f"{literal.text} is not a date (YYYY-MM-DD)", literal.position
                ) from None
            if len(literal.value) != 10:
                raise RuleError(f"{literal.text} is not a date (YYYY-MM-DD)", literal.position)
            return _Literal(day, DATE, token.position)
        if word == "null":
            raise RuleError(
                "null is not a value: write 'column is null' or 'column is not null'",
                token.position,
            )
        if word in _KEYWORDS:
            raise RuleError(f"expected a column or a value, found '{word}'", token.position)
        if word in _SQL_WORDS:
            raise RuleError(f"SQL ('{word}') is not part of the rule language", token.position)
        return self._column(token)

    def _column(self, token: _Token) -> _Column:
        name = token.text
        if name not in self.columns:
            close = difflib.get_close_matches(name, list(self.columns), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RuleError(
                f"unknown column '{name}'{hint}; valid columns: {', '.join(sorted(self.columns))}",
                token.position,
            )
        kind = column_kind(self.columns[name])
        if kind is None:
            raise RuleError(
                f"column '{name}' has type {self.columns[name]}, which rules cannot use",
                token.position,
            )
        self._advance()
        return _Column(name, kind, token.position)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the rule"
    return repr(token.text)


def _check_comparable(left, right, operator: _Token, ordered: bool = False) -> None:
    both_temporal = left.kind in _TEMPORAL and right.kind in _TEMPORAL
    if left.kind != right.kind and not both_temporal:
        hint = ""
        if DATE in (left.kind, right.kind) or TIMESTAMP in (left.kind, right.kind):
            hint = " (write dates as date '2026-01-31' or run_date - 90 days)"
        raise RuleError(
            f"cannot compare {_what(left)} with {_what(right)}{hint}", operator.position
        )
    is_ordering = ordered or operator.text in ("<", "<=", ">", ">=")
    if is_ordering and left.kind not in _ORDERED:
        raise RuleError(
            f"'{operator.text}' needs numbers or dates; {_what(left)} can only be compared "
            f"with =, != or in",
            operator.position,
        )


def _what(node) -> str:
    if isinstance(node, _Column):
        return f"{node.kind} column {node.name}"
    if isinstance(node, _RunDate):
        return "run_date"
    if isinstance(node, _Shift):
        return f"a {node.kind} expression"
    return f"a {node.kind} value"


# --- SQL ----------------------------------------------------------------------------------


class _Emitter:
    def __init__(self, alias: str, param_prefix: str):
        self.alias = sql.Identifier(alias)
        self.prefix = param_prefix
        self.params: dict[str, object] = {}
        self.columns: set[str] = set()

    def _parameter(self, value: object) -> sql.Composable:
        name = f"{self.prefix}_{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def condition(self, node) -> sql.Composable:
        if isinstance(node, _Junction):
            glue = sql.SQL(f" {node.operator} ")
            return sql.SQL("({})").format(glue.join(self.condition(op) for op in node.operands))
        if isinstance(node, _Not):
            return sql.SQL("(not {})").format(self.condition(node.operand))
        if isinstance(node, _Compare):
            return sql.SQL("({} {} {})").format(
                self.value(node.left),
                sql.SQL(_COMPARISON_SQL[node.operator]),
                self.value(node.right),
            )
        if isinstance(node, _In):
            keyword = "not in" if node.negated else "in"
            return sql.SQL("({} {} ({}))").format(
                self.value(node.operand),
                sql.SQL(keyword),
                sql.SQL(", ").join(self.value(item) for item in node.items),
            )
        if isinstance(node, _Between):
            keyword = "not between" if node.negated else "between"
            return sql.SQL("({} {} {} and {})").format(
                self.value(node.operand),
                sql.SQL(keyword),
                self.value(node.low),
                self.value(node.high),
            )
        if isinstance(node, _IsNull):
            keyword = "is not null" if node.negated else "is null"
            return sql.SQL("({} {})").format(self.value(node.column), sql.SQL(keyword))
        if isinstance(node, _Truth):
            return self.value(node.value)
        raise TypeError(f"not a condition: {node!r}")  # unreachable from the parser

    def value(self, node) -> sql.Composable:
        if isinstance(node, _Column):
            self.columns.add(node.name)
            return sql.SQL("{}.{}").format(self.alias, sql.Identifier(node.name))
        if isinstance(node, _Literal):
            if node.kind == TEXT:
                # psycopg sends str untyped; one literal compared with a text and a char(2)
                # column would leave PostgreSQL two guesses.
                return sql.SQL("cast({} as text)").format(self._parameter(node.value))
            return self._parameter(node.value)
        if isinstance(node, _RunDate):
            return sql.SQL("cast({} as date)").format(sql.Placeholder(RUN_DATE_PARAM))
        if isinstance(node, _Shift):
            parts = [self.value(node.base)]  # first, so parameters number in reading order
            for sign, field, amount in node.steps:  # left to right, one flat expression
                parts.append(
                    sql.SQL("{} make_interval({} => cast({} as integer))").format(
                        sql.SQL(sign), sql.SQL(field), self._parameter(amount)
                    )
                )
            shifted = sql.SQL("({})").format(sql.SQL(" ").join(parts))
            # date +/- interval is a timestamp; a date rule stays a date.
            return sql.SQL("cast({} as date)").format(shifted) if node.kind == DATE else shifted
        raise TypeError(f"not a value: {node!r}")  # unreachable from the parser


def compile_rule(
    text: str,
    columns: Mapping[str, str] | None = None,
    *,
    alias: str = "f",
    param_prefix: str = "rule",
) -> CompiledRule:
    """Compile an audience rule to a boolean SQL expression over `alias`.

    `columns` maps each usable column to its SQL type (default: `feature_columns()`).
    Execute the result with `{**compiled.params, "run_date": run_date}`.
    """
    if not isinstance(text, str):
        raise RuleError(f"a rule is text, not {type(text).__name__}")
    if not _IDENTIFIER.fullmatch(alias) or not _IDENTIFIER.fullmatch(param_prefix):
        raise ValueError("alias and param_prefix must be plain identifiers")
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"the rule is longer than {MAX_RULE_LENGTH} characters")
    if not text.strip():
        raise RuleError("the rule is empty", 0)
    parser = _Parser(text, dict(columns if columns is not None else feature_columns()))
    if len(parser.tokens) > MAX_RULE_TOKENS:
        raise RuleError(f"the rule has more than {MAX_RULE_TOKENS} words, values and symbols")
    tree = parser.parse()
    emitter = _Emitter(alias, param_prefix)
    condition = emitter.condition(tree)
    return CompiledRule(condition, dict(emitter.params), frozenset(emitter.columns))
