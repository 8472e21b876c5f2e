"""The shard and round-seed rules on their own: domain checks and a few fixed answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from r3mes.spec.shards import (
    RuleInputError,
    assign_shard,
    preferred_shard,
    round_seed,
    round_shard,
)


def test_round_seed_is_the_first_eight_bytes_big_endian() -> None:
    assert round_seed("") == 0
    assert round_seed("00000000000000ff" + "ab" * 24) == 255
    assert round_seed("ff" * 32) == 2**64 - 1
    for bad in ("XYZ", "AB" * 16, "ab" * 7, "ab" * 65):
        with pytest.raises(RuleInputError, match="not a lowercase hex"):
            round_seed(bad)


def test_preferred_shard_is_sha256_of_seed_and_miner() -> None:
    import hashlib

    expected = int.from_bytes(hashlib.sha256((7).to_bytes(8, "little") + b"m").digest(), "big")
    assert preferred_shard(seed=7, miner="m", n_shards=1000) == expected % 1000
    assert preferred_shard(seed=7, miner="m", n_shards=1) == 0


def test_probing_passes_claims_and_reuses_the_preferred_shard_when_full() -> None:
    first = preferred_shard(seed=3, miner="remes1a", n_shards=5)
    taken = {first, (first + 1) % 5}
    assert assign_shard(seed=3, miner="remes1a", n_shards=5, claimed=taken) == (first + 2) % 5
    assert assign_shard(seed=3, miner="remes1a", n_shards=5, claimed=set(range(5))) == first
    seed_hex = "ab" * 32
    assert round_shard(
        seed_hex=seed_hex, miner="remes1a", n_shards=5, claimed=taken
    ) == assign_shard(seed=round_seed(seed_hex), miner="remes1a", n_shards=5, claimed=taken)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1, "miner": "m", "n_shards": 4}, "seed"),
        ({"seed": 2**64, "miner": "m", "n_shards": 4}, "seed"),
        ({"seed": 1.0, "miner": "m", "n_shards": 4}, "seed"),
        ({"seed": 1, "miner": "", "n_shards": 4}, "miner"),
        ({"seed": 1, "miner": 5, "n_shards": 4}, "miner"),
        ({"seed": 1, "miner": "m", "n_shards": 0}, "n_shards"),
        ({"seed": 1, "miner": "m", "n_shards": True}, "n_shards"),
    ],
)
def test_out_of_domain_inputs_are_typed_errors(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(RuleInputError, match=field):
        preferred_shard(**kwargs)  # type: ignore[arg-type]


def test_claimed_must_be_a_set() -> None:
    with pytest.raises(RuleInputError, match="claimed"):
        assign_shard(seed=1, miner="m", n_shards=4, claimed=[1])  # type: ignore[arg-type]


def test_the_spec_imports_no_torch_numpy_or_server() -> None:
    code = (
        "import sys, r3mes.spec.shards\n"
        "bad = [m for m in ('torch', 'numpy', 'fastapi', 'r3mes.chain', 'r3mes.work')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
