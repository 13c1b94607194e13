"""`--where` predicates: a small SQL-like language over a manifest's columns, parsed (never
evaluated as Python) into a pyarrow compute expression and checked against the table's schema.

    predicate := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | "(" predicate ")" | operand [test]
    test      := ("=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
               | ["not"] "in" "(" literal ("," literal)* ")"
               | ["not"] "like" STRING            -- % any run of characters, _ one character
               | "is" ["not"] "null"
    operand   := COLUMN | literal
    literal   := ["-"] NUMBER | STRING | "true" | "false"

Keywords are case-insensitive; strings are in single quotes ('' for a quote); a column whose name
is a keyword or has odd characters goes in double quotes. An operand without a test must be a
boolean column. As in SQL, a comparison with a null is unknown and its row is not selected
(`language != 'en'` skips rows without a language): ask for them with `is null`.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import NoReturn

import pyarrow as pa
import pyarrow.compute as pc


class QueryError(ValueError):
    """A predicate that does not parse or does not fit the table's columns."""


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>'(?:[^']|'')*')
      | (?P<quoted>"(?:[^"]|"")*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|!=|<>|==|=|<|>)
      | (?P<punct>[(),-])""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "in", "like", "is", "null", "true", "false"}
_COMPARISONS = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name (a column), keyword, op, punct, end
    text: str
    pos: int


@dataclass(frozen=True)
class _Operand:
    expression: pc.Expression
    kind: str  # number, string, bool, or the Arrow type of a column no literal can match
    column: str | None  # None for a literal
    text: str
    value: object = None  # a literal's Python value


def value_kind(type_: pa.DataType) -> str:
    """What a column's values compare with: number, string, bool or (no literal) its type."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_boolean(type_):
        return "bool"
    return str(type_)


def unknown_column(name: str, schema: pa.Schema, hint: str = "") -> str:
    """The message for a column the table lacks: a hint or the closest name, then all the names."""
    close = difflib.get_close_matches(name, schema.names, n=1)
    hint = hint or (f"did you mean {close[0]!r}?" if close else "")
    return f"no column {name!r}{f' ({hint})' if hint else ''}; the columns are: {', '.join(schema.names)}"


def parse(text: str, schema: pa.Schema) -> pc.Expression:
    """The expression of a predicate over a table with `schema`; QueryError when it is not one."""
    return _Parser(text, schema).parse()


def select(table: pa.Table, where: str | None) -> pa.Table:
    """The rows of `table` the predicate selects (all of them without one), in table order."""
    if where is None:
        return table
    return table.filter(parse(where, table.schema))


def columns_of(text: str, schema: pa.Schema) -> list[str]:
    """The columns a (valid) predicate names, in order of first mention."""
    names = [token.text for token in _Parser(text, schema).tokens if token.kind == "name"]
    return list(dict.fromkeys(names))


class _Parser:
    def __init__(self, text: str, schema: pa.Schema):
        self.text = text
        self.schema = schema
        self.tokens = self._tokenize()
        self.i = 0

    # -- tokens --------------------------------------------------------------------------------

    def _tokenize(self) -> list[_Token]:
        tokens, pos = [], 0
        while pos < len(self.text):
            match = _TOKEN.match(self.text, pos)
            if match is None:
                if self.text[pos] in "'\"":
                    self._fail("unterminated " + ("string" if self.text[pos] == "'" else "quoted column name"), pos)
                self._fail(f"unexpected character {self.text[pos]!r}", pos)
            kind, word = match.lastgroup, match.group()
            if kind == "quoted":
                tokens.append(_Token("name", word[1:-1].replace('""', '"'), pos))
            elif kind == "name":
                keyword = word.lower() in KEYWORDS
                tokens.append(_Token("keyword" if keyword else "name", word.lower() if keyword else word, pos))
            elif kind != "space":
                tokens.append(_Token(kind, word, pos))
            pos = match.end()
        tokens.append(_Token("end", "", len(self.text)))
        return tokens

    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def _accept(self, *words: str) -> _Token | None:
        token = self._peek()
        if token.kind in ("keyword", "op", "punct") and token.text in words:
            return self._next()
        return None

    def _expect(self, word: str, what: str) -> _Token:
        token = self._accept(word)
        if token is None:
            self._fail(f"expected {what}, found {self._describe(self._peek())}", self._peek().pos)
        return token

    @staticmethod
    def _describe(token: _Token) -> str:
        return "the end of the predicate" if token.kind == "end" else repr(token.text)

    def _fail(self, message: str, pos: int) -> NoReturn:
        raise QueryError(f"{message}\n  {self.text}\n  {' ' * pos}^")

    # -- grammar -------------------------------------------------------------------------------

    def parse(self) -> pc.Expression:
        if self._peek().kind == "end":
            self._fail("empty predicate", 0)
        expression = self._or()
        if self._peek().kind != "end":
            self._fail(f"expected 'and', 'or' or the end, found {self._describe(self._peek())}", self._peek().pos)
        return expression

    def _or(self) -> pc.Expression:
        expression = self._and()
        while self._accept("or"):
            expression = expression | self._and()  # Kleene logic, as SQL: null or true is true
        return expression

    def _and(self) -> pc.Expression:
        expression = self._not()
        while self._accept("and"):
            expression = expression & self._not()
        return expression

    def _not(self) -> pc.Expression:
        if self._accept("not"):
            return ~self._not()
        if self._accept("("):
            expression = self._or()
            self._expect(")", "')'")
            return expression
        start = self._peek()
        left = self._operand()
        token = self._peek()
        if token.kind == "op":
            return self._comparison(left, self._next())
        if token.text in ("in", "like", "is", "not") and token.kind == "keyword":
            self._require_column(left, token)
            if self._accept("is"):
                negated = self._accept("not") is not None
                self._expect("null", "'null' after 'is'")
                return left.expression.is_valid() if negated else left.expression.is_null()
            negated = self._accept("not") is not None
            if self._accept("in"):
                expression = self._in(left)
            elif self._accept("like"):
                expression = self._like(left)
            else:
                self._fail(
                    f"expected 'in' or 'like' after 'not', found {self._describe(self._peek())}", self._peek().pos
                )
            return ~expression if negated else expression
        if left.column is None or left.kind != "bool":
            what = f"{left.column!r} is a {left.kind} column" if left.column else f"{left.text} is not a column"
            self._fail(f"{what}: compare it with something (=, <, in, like, is null, ...)", start.pos)
        return left.expression

    def _comparison(self, left: _Operand, op: _Token) -> pc.Expression:
        at = self._peek()
        right = self._operand()
        if left.column is None and right.column is None:
            self._fail("a comparison needs a column on one side", op.pos)
        if left.kind != right.kind or left.kind not in ("number", "string", "bool"):
            self._fail(f"cannot compare {self._show(left)} with {self._show(right)}", at.pos)
        return _COMPARISONS[op.text](left.expression, right.expression)

    def _in(self, left: _Operand) -> pc.Expression:
        self._expect("(", "'(' after 'in'")
        values = [self._literal_of(left)]
        while self._accept(","):
            values.append(self._literal_of(left))
        self._expect(")", "',' or ')'")
        value_set = pa.array(values)  # isin casts it to the column's type
        # isin says false for a null; SQL says unknown, so that `not in` skips nulls too.
        return pc.if_else(
            left.expression.is_valid(), left.expression.isin(value_set), pc.scalar(pa.scalar(None, pa.bool_()))
        )

    def _like(self, left: _Operand) -> pc.Expression:
        pattern = self._peek()
        if pattern.kind != "string":
            self._fail(f"expected a 'quoted' pattern after 'like', found {self._describe(pattern)}", pattern.pos)
        if left.kind != "string":
            self._fail(f"'like' needs a string column; {left.column!r} is a {left.kind} column", pattern.pos)
        return pc.match_like(left.expression, self._operand().value)

    def _literal_of(self, column: _Operand):
        token = self._peek()
        literal = self._operand()
        if literal.column is not None:
            self._fail(f"expected a value, found the column {literal.column!r}", token.pos)
        if literal.kind != column.kind:
            self._fail(f"cannot compare {self._show(column)} with {self._show(literal)}", token.pos)
        return literal.value

    def _operand(self) -> _Operand:
        token = self._next()
        if token.kind == "name":
            if token.text not in self.schema.names:
                after = self.tokens[self.i - 2] if self.i >= 2 else None
                value_expected = after is not None and (after.kind == "op" or after.text in ("(", ","))
                hint = f"a string value goes in single quotes: '{token.text}'" if value_expected else ""
                self._fail(unknown_column(token.text, self.schema, hint), token.pos)
            kind = value_kind(self.schema.field(token.text).type)
            return _Operand(pc.field(token.text), kind, token.text, token.text)
        if token.kind == "punct" and token.text == "-" and self._peek().kind == "number":
            number = self._next()
            return self._literal("number", f"-{number.text}", -_number(number.text))
        if token.kind == "number":
            return self._literal("number", token.text, _number(token.text))
        if token.kind == "string":
            return self._literal("string", token.text, token.text[1:-1].replace("''", "'"))
        if token.kind == "keyword" and token.text in ("true", "false"):
            return self._literal("bool", token.text, token.text == "true")
        if token.kind == "keyword" and token.text == "null":
            self._fail("a comparison with null is never true: use 'is null' or 'is not null'", token.pos)
        self._fail(f"expected a column or a value, found {self._describe(token)}", token.pos)

    @staticmethod
    def _literal(kind: str, text: str, value) -> _Operand:
        return _Operand(pc.scalar(value), kind, None, text, value)

    def _require_column(self, operand: _Operand, token: _Token) -> None:
        if operand.column is None:
            self._fail(f"'{token.text}' needs a column on its left, not {operand.text}", token.pos)

    @staticmethod
    def _show(operand: _Operand) -> str:
        return f"{operand.column!r} ({operand.kind} column)" if operand.column else f"{operand.text} ({operand.kind})"


def _number(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)
