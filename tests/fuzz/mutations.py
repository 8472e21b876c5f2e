"""Strategies that start from valid encodings and damage them, so cases reach deep code.

Random bytes alone rarely get past a decoder's first length check; a mutated valid encoding
passes the outer layers and fails (or not) somewhere inside. `mutated(seeds)` applies one to
four of: flip a bit, set a byte to an interesting value, insert or delete a run, duplicate a
run, truncate, splice two seeds. `json_mutated` works on the parsed document instead:
replace a value by an interesting one (huge or negative numbers, NaN, deep nesting, wrong
types), delete or add a key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B, 0x30, 0x39)
INTERESTING_VALUES: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**31,
    2**47,
    2**63,
    2**64,
    int("1" * 400),
    -(2**63),
    1e400,
    float("nan"),
    -0.0,
    0.5,
    "",
    "x" * 300,
    "\udcff",
    "²",
    None,
    True,
    [],
    {},
    [1] * 65,
    [0, 2**47, 2**47],
    "[" * 3000,
)


@st.composite
def _edit(draw: st.DrawFn, data: bytes, pool: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    kind = draw(st.integers(0, 6))
    pos = draw(st.integers(0, len(buf))) if buf else 0
    if kind == 0 and buf:  # flip one bit
        i = min(pos, len(buf) - 1)
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == 1 and buf:  # an interesting byte
        buf[min(pos, len(buf) - 1)] = draw(st.sampled_from(INTERESTING_BYTES))
    elif kind == 2:  # insert a run
        buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == 3 and buf:  # delete a run
        del buf[pos : pos + draw(st.integers(1, 16))]
    elif kind == 4 and buf:  # duplicate a run
        run = bytes(buf[pos : pos + draw(st.integers(1, 64))])
        buf[pos:pos] = run * draw(st.integers(1, 8))
    elif kind == 5:  # truncate
        del buf[pos:]
    elif pool:  # splice with another seed
        other = draw(st.sampled_from(pool))
        cut = draw(st.integers(0, len(other)))
        buf = buf[:pos] + bytearray(other[cut:])
    return bytes(buf)


@st.composite
def _mutate(draw: st.DrawFn, pool: Sequence[bytes]) -> bytes:
    data = draw(st.sampled_from(pool))
    for _ in range(draw(st.integers(1, 4))):
        data = draw(_edit(data, pool))
    return data


def mutated(seeds: Sequence[bytes], *, max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Valid `seeds` as they are, mutated, and (rarely) plain random bytes."""
    pool = list(seeds)
    return st.one_of(
        st.sampled_from(pool),
        _mutate(pool),
        _mutate(pool),
        _mutate(pool),
        st.binary(max_size=max_random),
    )


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into a small JSON document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*prefix, index))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


json_leaf = st.one_of(
    st.sampled_from(INTERESTING_VALUES),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.lists(st.integers(-3, 3), max_size=4),
    st.integers(1, 150).map(lambda n: json.loads("[" * n + "]" * n)),  # 3 edits stay < 500 deep
)


@st.composite
def _leaf(draw: st.DrawFn) -> Any:
    """A fresh copy: later edits must never change the shared INTERESTING_VALUES."""
    return copy.deepcopy(draw(json_leaf))


@st.composite
def _json_edit(draw: st.DrawFn, doc: Any) -> Any:
    path = draw(st.sampled_from(_paths(doc)))
    kind = draw(st.integers(0, 2))
    if kind == 0 or not path:
        return _set(doc, path, draw(_leaf()))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if kind == 1:  # delete the key or item
        del parent[path[-1]]
    elif isinstance(parent, dict):  # add a key
        parent[draw(st.text(max_size=12))] = draw(_leaf())
    else:
        parent.append(draw(_leaf()))
    return doc


@st.composite
def _json_mutate(draw: st.DrawFn, seeds: Sequence[str]) -> str:
    doc = json.loads(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        doc = draw(_json_edit(doc))
    return json.dumps(doc, allow_nan=True)


def json_mutated(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    """Valid JSON `seeds`, structurally mutated, byte-mutated, and deep or odd texts."""
    return st.one_of(
        st.sampled_from(list(seeds)),
        _json_mutate(seeds),
        _json_mutate(seeds),
        _json_mutate(seeds),
        mutated([s.encode() for s in seeds]).map(lambda b: b.decode("utf-8", "replace")),
        st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
        st.text(max_size=200),
    )
