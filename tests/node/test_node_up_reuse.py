"""`r3mes up` in a home that already holds a network: the same options reuse its ledger,
other genesis-level options (or role keys its genesis never funded) are refused with the
differences named, and nothing in the home is changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from r3mes.chain.devnet import devnet_genesis, genesis_path, init_devnet
from r3mes.node.errors import ValidationError
from r3mes.node.localnet.setup import NetworkSpec, ensure_keys, prepare_genesis
from r3mes.paths import Home


def _made_with(spec: NetworkSpec) -> dict[str, str]:
    """Write the genesis `r3mes up` would write for `spec` (no artifacts: none are read)."""
    addresses = ensure_keys(spec)
    balances = dict.fromkeys(addresses.values(), 1000)
    genesis = devnet_genesis(
        accounts=balances,
        round_length=spec.round_blocks,
        pow_difficulty=spec.difficulty,
        shards_per_round=spec.shards,
        attestation_quorum=spec.quorum,
        validators_per_submission=spec.validators,
    )
    init_devnet(spec.home, genesis)
    return addresses


def test_same_options_reuse_the_ledger(tmp_path: Path) -> None:
    spec = NetworkSpec(home=Home(root=tmp_path), backend=False)
    addresses = _made_with(spec)
    before = genesis_path(spec.home).read_bytes()
    prepare_genesis(spec, addresses)  # reused: no artifacts are built, nothing is rewritten
    fewer = NetworkSpec(home=spec.home, backend=False, miners=1)
    prepare_genesis(fewer, ensure_keys(fewer))  # a subset of the funded roles is fine
    assert genesis_path(spec.home).read_bytes() == before


def test_other_genesis_options_are_refused_with_the_differences(tmp_path: Path) -> None:
    spec = NetworkSpec(home=Home(root=tmp_path), backend=False)
    _made_with(spec)
    before = genesis_path(spec.home).read_bytes()
    other = NetworkSpec(
        home=spec.home,
        backend=False,
        round_blocks=10,
        difficulty=4,
        validators=3,
        quorum=2,
        base_model="tiny",
    )
    with pytest.raises(ValidationError) as caught:
        prepare_genesis(other, ensure_keys(other))
    message = str(caught.value)
    for part in (
        "--round-blocks 20 (asked: 10)",
        "--difficulty 8 (asked: 4)",
        "--quorum 1 (asked: 2)",
        "--verifiers 1 (asked: 3)",
        "--base-model shipped (asked: tiny)",
        "no genesis account for validator-2, validator-3",
        "--home DIR",
    ):
        assert part in message
    assert genesis_path(spec.home).read_bytes() == before


def test_a_role_the_genesis_never_funded_is_refused(tmp_path: Path) -> None:
    """A cheater (or another miner) added to an existing network would stake nothing, so
    its slashes would burn nothing."""
    spec = NetworkSpec(home=Home(root=tmp_path), backend=False)
    _made_with(spec)
    cheating = NetworkSpec(home=spec.home, backend=False, cheaters=("random",))
    with pytest.raises(ValidationError, match="no genesis account for cheater-1"):
        prepare_genesis(cheating, ensure_keys(cheating))
