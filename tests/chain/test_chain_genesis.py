"""Genesis validation: strict types, canonical addresses, clear errors for bad documents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chain.chain_harness import key, make_genesis

from r3mes.chain.errors import GenesisError
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.state import genesis_state

ALICE = key(1).address


def document(**changes: Any) -> str:
    doc = json.loads(make_genesis().to_json())
    for path, value in changes.items():
        target = doc
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"accounts__0__balance": 1.5}, "balance must be a non-negative integer"),
        ({"accounts__0__balance": True}, "balance must be a non-negative integer"),
        ({"accounts__0__balance": "10"}, "balance must be a non-negative integer"),
        ({"accounts__0__balance": -1}, "balance must be a non-negative integer"),
        ({"params__devnet": "no"}, "devnet must be true or false"),
        ({"params__devnet": 1}, "devnet must be true or false"),
        ({"params__round_length": 2.0}, "round_length must be a non-negative integer"),
        ({"params__max_block_txs": False}, "max_block_txs must be a non-negative integer"),
        ({"params__authority": 5}, "authority must be a string"),
        ({"params__adapter_id": "bad id"}, "adapter_id"),
        ({"params__colour": 1}, "unknown genesis params fields: ['colour']"),
        ({"genesis_time_ms": 1.5}, "genesis_time_ms must be a non-negative integer"),
        ({"genesis_time_ms": "5"}, "genesis_time_ms must be a non-negative integer"),
        ({"chain_id": 7}, "chain_id must be"),
        ({"accounts__0__address": "remes1" + "q" * 38}, "checksum"),
        ({"accounts__0__address": ALICE[:10].upper() + ALICE[10:]}, "mixes upper and lower"),
        ({"accounts__0__address": 12}, "address string"),
        ({"accounts__0__extra": 1}, "unknown genesis account fields: ['extra']"),
        ({"artifacts__0__size": "100"}, "genesis artifact"),
        ({"artifacts__0__target_modules": "q_proj"}, "target_modules must be a list"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_wrongly_typed_values_are_refused(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(GenesisError, match=None) as info:
        Genesis.from_json(document(**changes))
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("null", "must be a JSON object"),
        ("[1]", "must be a JSON object"),
        ("{", "not JSON"),
        ('{"version": 1, "chain_id": "c"}', "lacks fields: ['genesis_time_ms']"),
        ('{"version": 1, "chain_id": "c", "genesis_time_ms": 0, "accounts": {}}', "JSON lists"),
        ('{"version": 1, "chain_id": "c", "genesis_time_ms": 0, "accounts": [5]}', "JSON object"),
    ],
)
def test_malformed_documents_get_clear_errors(text: str, says: str) -> None:
    with pytest.raises(GenesisError) as info:
        Genesis.from_json(text)
    assert says in str(info.value) and "NoneType" not in str(info.value)


def test_addresses_are_stored_in_canonical_lower_case() -> None:
    upper = ALICE.upper()
    genesis = Genesis.from_json(
        document(accounts__0__address=upper, params__authority=key(99).address.upper())
    )
    assert genesis.accounts[0].address == ALICE
    assert genesis.params.authority == key(99).address
    assert ALICE in genesis_state(genesis).accounts  # reachable by the signer's own txs
    assert GenesisAccount(upper, 5) == GenesisAccount(ALICE, 5)
    with pytest.raises(GenesisError, match="listed twice"):
        Genesis(
            chain_id="c",
            genesis_time_ms=0,
            accounts=(GenesisAccount(ALICE, 1), GenesisAccount(upper, 2)),
        )
    with pytest.raises(GenesisError, match="true or false"):
        Params(devnet="yes")  # type: ignore[arg-type]
    assert Genesis.from_json(make_genesis().to_json()) == make_genesis()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),  # was RecursionError
        ('{"a":' * 3000 + "1" + "}" * 3000, "nests too deeply"),
        ('{"version": 1, "chain_id": ' + "[" * 500 + "]" * 500 + "}", "nests more than 6"),
        (b"{}", "JSON text"),
    ],
    ids=["lists", "objects", "deep-value", "bytes"],
)
def test_deeply_nested_genesis_is_a_genesis_error(text: Any, match: str) -> None:
    """Issue 19 item 12: `Genesis.from_json` raised RecursionError on nested JSON."""
    with pytest.raises(GenesisError, match=match):
        Genesis.from_json(text)


def test_a_genesis_with_artifacts_is_within_the_depth_bound() -> None:
    doc = json.loads(make_genesis().to_json())
    doc["artifacts"] = [{"target_modules": ["q_proj"]}]  # four levels, then field checks
    with pytest.raises(GenesisError, match="genesis artifact lacks fields"):
        Genesis.from_json(json.dumps(doc))
