"""Fuzz the ledger's decoders: transactions, genesis documents and JSON-RPC requests.

The RPC cases cover the pure parsing functions only (request body, tx_search query, heights,
byte and number parameters); the HTTP layer is tested in tests/chain/test_chain_rpc*.py.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from fuzz.harness import fuzz
from fuzz.mutations import json_mutated, mutated
from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import ChainError
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.msgs import (
    ArtifactSpec,
    Attest,
    Faucet,
    Msg,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    SubmitGradient,
    TransferCredits,
)
from r3mes.chain.rpc import search_conditions
from r3mes.chain.rpc_json import (
    RpcError,
    decode_request,
    height_param,
    number_param,
    parse_bytes,
)
from r3mes.chain.tx import build_tx, decode_tx


def _key(n: int) -> SigningKey:
    return SigningKey(secret=n.to_bytes(32, "big"))


ALICE, BOB = _key(1), _key(2)
ARTIFACT = ArtifactSpec(
    kind="adapter",
    id="a",
    version=1,
    cid="bafyx",
    sha256="11" * 32,
    size=10,
    base_model_id="m",
    base_model_version=1,
    target_modules=("q_proj", "v_proj"),
    rank=4,
)


def _txs() -> list[bytes]:
    a, b = ALICE.address, BOB.address
    msgs: list[list[Msg]] = [
        [TransferCredits(creator=a, to=b, amount=5)],
        [SubmitGradient(creator=a, round=3, shard=1, cid="bafyq", digest="ab" * 32, pow_nonce=9)],
        [Attest(creator=a, submission_id=4, verdict="accept", distance_ppm=12)],
        [RegisterNode(creator=a, role="miner", endpoint="http://x", stake=1)],
        [RegisterArtifact(creator=a, artifact=ARTIFACT)],
        [
            ProposeAdapter(
                creator=a,
                round=2,
                adapter_cid="bafyz",
                sha256="22" * 32,
                size=9,
                version=2,
                parent_version=1,
                submission_ids=(1, 2),
            ),
            Faucet(creator=a, to=b, amount=2**63),
        ],
    ]
    return [
        build_tx(m, key=ALICE, chain_id="r3mes-fuzz", account_number=7, sequence=n, memo="m")
        for n, m in enumerate(msgs)
    ]


def test_decode_tx() -> None:
    fuzz("decode_tx", mutated(_txs(), max_random=2048), decode_tx, (ChainError,))


def _genesis_seeds() -> list[str]:
    plain = Genesis(chain_id="r3mes-fuzz", genesis_time_ms=1)
    full = Genesis(
        chain_id="r3mes-fuzz",
        genesis_time_ms=1_000_000,
        params=Params(devnet=True, pow_difficulty=2, authority=ALICE.address),
        accounts=(GenesisAccount(ALICE.address, 1000), GenesisAccount(BOB.address, 5)),
        artifacts=(ARTIFACT,),
    )
    return [plain.to_json(), full.to_json()]


def test_genesis_from_json() -> None:
    fuzz("Genesis.from_json", json_mutated(_genesis_seeds()), Genesis.from_json, (ChainError,))


REQUESTS = [
    json.dumps({"jsonrpc": "2.0", "id": 1, "method": "status", "params": {}}),
    json.dumps({"jsonrpc": "2.0", "id": "x", "method": "block", "params": {"height": "3"}}),
    json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tx_search", "params": {"query": "tx.height=5"}}
    ),
    json.dumps([{"jsonrpc": "2.0", "id": 3, "method": "abci_query", "params": ["/x", "0x00"]}]),
]


def test_decode_rpc_request() -> None:
    texts = json_mutated(REQUESTS)
    fuzz("rpc decode_request", st.one_of(texts, texts.map(str.encode)), decode_request, (RpcError,))


QUERIES = [
    "tx.height=5",
    "message.sender='remes1abc'",
    "tx.height>=5 AND message.sender='x'",
    "transfer.amount<3 AND transfer.recipient CONTAINS 'r' AND tx.hash='AB' AND x.y EXISTS",
]
query_texts = st.one_of(
    mutated([q.encode() for q in QUERIES]).map(lambda b: b.decode("utf-8", "replace")),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["tx.height", "message.sender", "x", "tx.hash"]),
        st.one_of(st.text(max_size=30), st.sampled_from(["²", "9" * 23, "-1", "0x10", " 7 "])),
    ),
)


def test_parse_tx_query() -> None:
    fuzz(
        "rpc tx_search query",
        query_texts,
        lambda q: search_conditions(q, "tx.height"),
        (RpcError,),
    )


def _params(case: tuple[int, str]) -> object:
    which, text = case
    if which == 0:
        return height_param(text, "height")
    if which == 1:
        return parse_bytes(text, "tx")
    return number_param(text, "timeout", low=0, high=60)


def test_rpc_params() -> None:
    values = st.one_of(
        st.text(max_size=40),
        st.sampled_from(["0x", "0xzz", '"AAAA"', "²", "nan", "inf", "1e400", "9" * 5000, "-0"]),
        mutated([b"0x00ff", b"AAAA", b"12", b"3.5"]).map(lambda b: b.decode("utf-8", "replace")),
    )
    fuzz("rpc params", st.tuples(st.integers(0, 2), values), _params, (RpcError,))
