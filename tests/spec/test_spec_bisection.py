from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3mes.spec.bisection import (
    Bisection,
    BisectionError,
    advance,
    is_narrowed,
    max_rounds,
    merkle_proof,
    merkle_root,
    open_bisection,
    query_step,
    verify_merkle_proof,
)


def _h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@given(n=st.integers(1, 70), data=st.data())
def test_every_leaf_proves_under_the_root_and_nothing_else_does(
    n: int, data: st.DataObject
) -> None:
    ds = [_h(i) for i in range(n)]
    root = merkle_root(ds)
    i = data.draw(st.integers(0, n - 1))
    proof = merkle_proof(ds, i)
    assert len(proof) <= max(1, (n - 1).bit_length())
    assert verify_merkle_proof(root=root, count=n, index=i, digest=ds[i], proof=proof)
    assert not verify_merkle_proof(root=root, count=n, index=i, digest=_h(-1), proof=proof)
    if n > 1:
        other = (i + 1) % n
        assert not verify_merkle_proof(root=root, count=n, index=other, digest=ds[i], proof=proof)
    if proof:
        bad = (proof[0][:-1] + ("0" if proof[0][-1] != "0" else "1"),) + proof[1:]
        assert not verify_merkle_proof(root=root, count=n, index=i, digest=ds[i], proof=bad)
        assert not verify_merkle_proof(root=root, count=n, index=i, digest=ds[i], proof=proof[:-1])
    assert not verify_merkle_proof(root=root, count=n, index=i, digest=ds[i], proof=(*proof, _h(5)))


def test_malformed_inputs_are_typed_errors_or_false() -> None:
    with pytest.raises(BisectionError):
        merkle_root([])
    with pytest.raises(BisectionError):
        merkle_root(["xyz"])
    with pytest.raises(BisectionError):
        merkle_proof([_h(1)], 1)
    root = merkle_root([_h(1), _h(2)])
    for kwargs in (
        {"count": 0, "index": 0},
        {"count": 2, "index": 2},
        {"count": 2, "index": True},
    ):
        assert not verify_merkle_proof(root=root, digest=_h(1), proof=(_h(2),), **kwargs)
    assert not verify_merkle_proof(root="nothex", count=2, index=0, digest=_h(1), proof=(_h(2),))
    with pytest.raises(BisectionError):
        Bisection(steps=4, lo=2, hi=2)
    with pytest.raises(BisectionError):
        open_bisection(0)
    with pytest.raises(BisectionError):
        query_step(Bisection(steps=4, lo=2, hi=3))


@given(steps=st.integers(1, 5000), data=st.data())
def test_bisection_finds_the_first_bad_step_within_ceil_log2_rounds(
    steps: int, data: st.DataObject
) -> None:
    bad = data.draw(st.integers(1, steps))  # the first step whose digests differ
    b = open_bisection(steps)
    while not is_narrowed(b):
        b = advance(b, agree=query_step(b) < bad)
    assert (b.lo, b.hi) == (bad - 1, bad)
    assert b.rounds <= max_rounds(steps)


def test_max_rounds_is_ceil_log2() -> None:
    assert [max_rounds(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [0, 1, 2, 2, 3, 3, 4, 6, 7]
