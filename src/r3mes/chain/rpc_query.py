"""CometBFT's event query language, as `tx_search` and `block_search` take it.

A query is conditions joined by AND: `tag op operand` or `tag EXISTS`, where a tag is
`type.key` (letters, digits, `_` and `.`), op is one of = < <= > >= CONTAINS, and an
operand is a 'single-quoted string' (no escapes: it ends at the next quote) or a number.
`<`, `<=`, `>`, `>=` take numbers only, CONTAINS strings only, as in CometBFT v0.38
(libs/pubsub/query/syntax). The `TIME` and `DATE` operands are refused: no R3MES event
carries a time attribute. Numbers are ASCII digits with an optional sign and fraction,
kept exact (int or Decimal), never floats.

Parsing is pure; what a condition matches is the store's business (`Store.search_txs`,
`Store.search_blocks`), where `tx.height`, `tx.hash` and `block.height` are the indexed
keys and every other tag is an event attribute (`message.sender`, `transfer.recipient`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

Op = Literal["=", "<", "<=", ">", ">=", "CONTAINS", "EXISTS"]
Operand = str | int | Decimal | None
MAX_QUERY_CHARS = 1024
MAX_CONDITIONS = 16

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'[^']*')
    | (?P<number>[-+]?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
    | (?P<op><=|>=|=|<|>)
    | (?P<word>[A-Za-z][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"AND", "CONTAINS", "EXISTS", "TIME", "DATE"})


class QuerySyntaxError(ValueError):
    """The query is not in CometBFT's query language (or uses what R3MES does not index)."""


@dataclass(frozen=True)
class Condition:
    tag: str
    """`type.key`: `tx.height`, `block.height`, `tx.hash` or an event attribute."""
    op: Op
    operand: Operand
    """The string or number compared with; None for EXISTS."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            offset = len(text) - len(text[pos:].lstrip())
            raise QuerySyntaxError(
                f"offset {offset}: unexpected {text[offset : offset + 10]!r} "
                f"after {text[max(0, offset - 24) : offset]!r}"
            )
        kind = match.lastgroup
        value = match.group(kind)
        start = match.start(kind)
        if kind == "word" and value in _KEYWORDS:
            kind = value
        out.append((kind, value, start))
        pos = match.end()
    return out


def _number(text: str) -> int | Decimal:
    if "." not in text:
        return int(text)
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # the regex admits only decimal literals
        raise QuerySyntaxError(f"{text!r} is not a number") from exc


def parse_query(query: object) -> tuple[Condition, ...]:
    """The conditions of `query`; QuerySyntaxError says where it goes wrong."""
    if not isinstance(query, str):
        raise QuerySyntaxError('query must be a string such as "tx.height=5"')
    text = query.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]  # the URI form quotes string parameters
    if len(text) > MAX_QUERY_CHARS:
        raise QuerySyntaxError(f"query is longer than {MAX_QUERY_CHARS} characters")
    tokens = _tokens(text)
    if not tokens:
        raise QuerySyntaxError("offset 0: EOF (the query is empty)")
    conditions: list[Condition] = []
    i = 0
    while True:
        if len(conditions) >= MAX_CONDITIONS:
            raise QuerySyntaxError(f"a query may have at most {MAX_CONDITIONS} conditions")
        conditions.append(_condition(tokens, i))
        i += 2 if conditions[-1].op == "EXISTS" else 3
        if i == len(tokens):
            return tuple(conditions)
        kind, value, start = tokens[i]
        if kind != "AND":
            raise QuerySyntaxError(f"offset {start}: got {value!r}, wanted AND")
        i += 1
        if i == len(tokens):
            raise QuerySyntaxError(f"offset {start}: AND ends the query")


def _condition(tokens: list[tuple[str, str, int]], i: int) -> Condition:
    kind, tag, start = tokens[i]
    if kind != "word":
        raise QuerySyntaxError(f"offset {start}: got {tag!r}, wanted a tag such as tx.height")
    if i + 1 == len(tokens):
        raise QuerySyntaxError(f"offset {start}: {tag} needs an operator (= < <= > >= ...)")
    kind, op, start = tokens[i + 1]
    if kind == "EXISTS":
        return Condition(tag, "EXISTS", None)
    if kind not in ("op", "CONTAINS"):
        raise QuerySyntaxError(f"offset {start}: got {op!r}, wanted = < <= > >= CONTAINS EXISTS")
    if i + 2 == len(tokens):
        raise QuerySyntaxError(f"offset {start}: {tag} {op} needs an operand")
    kind, operand, start = tokens[i + 2]
    if kind in ("TIME", "DATE"):
        raise QuerySyntaxError(f"offset {start}: {tag}: no R3MES event has a time to compare")
    if kind == "string":
        if op in ("<", "<=", ">", ">="):
            raise QuerySyntaxError(f"offset {start}: {tag} {op} wants a number, not a string")
        return Condition(tag, "CONTAINS" if op == "CONTAINS" else "=", operand[1:-1])
    if kind == "number":
        if op == "CONTAINS":
            raise QuerySyntaxError(f"offset {start}: {tag} CONTAINS wants a 'string'")
        return Condition(tag, _op(op), _number(operand))
    raise QuerySyntaxError(f"offset {start}: {tag}: got {operand!r}, wanted 'string' or number")


_OPS: dict[str, Op] = {"=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _op(text: str) -> Op:
    try:
        return _OPS[text]
    except KeyError as exc:
        raise QuerySyntaxError(f"unknown operator {text!r}") from exc
