"""A devnet with every kind of ledger activity, for the explorer's indexer tests.

`start_devnet` makes a chain whose rounds are short; `play(url, rounds)` drives it: nodes
register (with stakes), a serving node beats, an honest miner and a cheating miner submit
every round, three validators accept the honest update and reject the cheat (settling one
as verified and slashing the other; the third verdict comes late, and in the first round
the third validator misses one and contradicts the other, so the window's end penalizes
it), the proposer merges each closed round's verified updates into a new adapter version
that the assigned validators check (the first round's first proposal carries a wrong
digest: rejected, the proposer slashed through its bonded and unbonding stake, then
proposed again), the cheater challenges its first rejection and loses the dispute by
deadline, in the second round the third validator's late `reject` of the honest update
becomes a dispute the accepting side never answers (the verdict is turned over, so that
round merges nothing), a validator unbonds part of its stake and withdraws it, credits
move by transfer and faucet, an artifact is registered and approved, and some
transactions fail inside blocks (code != 0). Then `compare` holds the explorer's answers
against the ledger's own REST and RPC answers (rounds, submissions, proposals, disputes,
stake, nodes, artifacts, txs, accounts, blocks).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx

from r3mes.backend.services.quorum_views import DISPUTE_FIELDS
from r3mes.chain.client import BlockchainClient
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.errors import ClientError, TxRejected
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    AttestAdapter,
    DisputeCheckpoint,
    Faucet,
    OpenDispute,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    TransferCredits,
    Unbond,
    Withdraw,
)
from r3mes.chain.vocab import Role, Verdict
from r3mes.paths import Home


def key(n: int) -> SigningKey:
    return SigningKey(secret=(1000 + n).to_bytes(32, "big"))


HONEST, CHEAT, V1, V2, V3, PROPOSER, SERVING, AUTHORITY, USER = (key(i) for i in range(1, 10))
MODEL = ArtifactSpec(
    kind="model", id="bitnet-tiny", version=1, cid="bafymodel", sha256="11" * 32, size=100
)
DATASET = ArtifactSpec(
    kind="dataset", id="ds", version=1, cid="bafydata", sha256="22" * 32, size=50
)


def start_devnet(home: Home, port: int, *, block_interval_s: float = 0.1) -> DevnetNode:
    """Initialise (once) and start the scenario's devnet. Its rounds are 40 blocks: at 0.1 s
    a block, 4 s for a round's ~10 transactions, each sent after the last one committed (at
    0.05 s, a loaded box missed rounds: no verified update, no merge)."""
    genesis = devnet_genesis(
        accounts={k.address: 100_000 for k in (HONEST, CHEAT, V1, V2, V3, PROPOSER, SERVING, USER)},
        artifacts=[MODEL, DATASET],
        genesis_time_ms=1_700_000_000_000,
        pow_difficulty=2,
        attestation_quorum=2,
        validators_per_submission=3,
        round_length=40,
        shards_per_round=8,
        min_stake=10,
        slash_amount=30,
        authority=AUTHORITY.address,
        attestation_rounds=1,
        dispute_step_blocks=10,
        unbonding_blocks=20,
    )
    init_devnet(home, genesis)
    node = DevnetNode(home, DevnetConfig(port=port, block_interval_s=block_interval_s))
    node.start()
    return node


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _send(client: BlockchainClient, signer: SigningKey, msgs: list[Any]) -> int:
    """Send and wait; a tx failing in its block is fine (it is indexed too): its code."""
    try:
        return client.sign_and_broadcast(signer, msgs, timeout_s=30).code
    except TxRejected as exc:
        return exc.code


def play(url: str, rounds: int, *, on_round: Callable[[int], None] | None = None) -> None:
    """Drive `rounds` rounds of activity on the devnet at `url` (see the module docstring)."""
    with BlockchainClient(url, timeout_s=10, retries=3) as c:
        roles: tuple[tuple[SigningKey, Role, int], ...] = (
            (HONEST, "miner", 100),
            (CHEAT, "miner", 100),
            (V1, "validator", 50),
            (V2, "validator", 50),
            (V3, "validator", 50),
            (PROPOSER, "proposer", 10),
            (SERVING, "serving", 10),
        )
        for signer, role, stake in roles:
            endpoint = "http://127.0.0.1:1/" if role != "miner" else ""
            _send(
                c,
                signer,
                [RegisterNode(creator=signer.address, role=role, endpoint=endpoint, stake=stake)],
            )
        _send(
            c,
            SERVING,
            [
                ServingHeartbeat(
                    creator=SERVING.address,
                    endpoint="http://127.0.0.1:2/",
                    adapter_version=0,
                    capacity=4,
                )
            ],
        )
        # Stake on its way out: V3 unbonds (withdrawn later), PROPOSER's is slashed first.
        _send(c, V3, [Unbond(creator=V3.address, role="validator", amount=20)])
        _send(c, PROPOSER, [Unbond(creator=PROPOSER.address, role="proposer", amount=4)])
        # Fails inside its block: USER is no validator (check_tx does not look at roles).
        _send(c, USER, [Attest(creator=USER.address, submission_id=1, verdict="accept")])
        spec = ArtifactSpec(
            kind="dataset", id="ds", version=2, cid="bafydata2", sha256="33" * 32, size=60
        )
        _send(c, USER, [RegisterArtifact(creator=USER.address, artifact=spec)])
        _send(c, AUTHORITY, [Faucet(creator=AUTHORITY.address, to=AUTHORITY.address, amount=5)])
        _send(
            c,
            AUTHORITY,
            [ApproveArtifact(creator=AUTHORITY.address, kind="dataset", id="ds", version=2)],
        )
        for i in range(rounds):
            _play_round(c, i)
            if on_round is not None:
                on_round(i)


def _play_round(c: BlockchainClient, i: int) -> None:
    # start at a round's first blocks: the previous round's proposals and dispute may have
    # taken most of the current one, and a submission must land in the round it names
    started = c.current_round().number
    while c.current_round().number == started:
        time.sleep(0.05)
    rnd = c.current_round()
    subs: dict[str, int] = {}
    for miner in (HONEST, CHEAT):
        try:
            c.submit_gradient(
                miner,
                round_number=rnd.number,
                cid=f"bafyupd{i}{miner.address[-6:]}",
                digest=_digest(f"{i}{miner.address}"),
            )
        except (TxRejected, ClientError):
            continue  # the round closed between reading it and sending (a failed tx)
    for sub in c.submissions(rnd.number):
        subs[sub.miner] = sub.id
    for validator in (V1, V2, V3):
        for miner_address, sid in subs.items():
            verdict: Verdict = "accept" if miner_address == HONEST.address else "reject"
            if i == 0 and validator is V3:  # late: misses the honest one, contradicts the cheat
                if miner_address == HONEST.address:
                    continue
                verdict = "accept"
            if i == 1 and validator is V3 and miner_address == HONEST.address:
                verdict = "reject"  # late; its dispute then overturns the quorum's verdict
            _send(
                c,
                validator,
                [
                    Attest(
                        creator=validator.address,
                        submission_id=sid,
                        verdict=verdict,
                        distance_ppm=7 * (i + 1),
                    )
                ],
            )
    if i == 1:
        _send(c, V3, [Withdraw(creator=V3.address)])
    _send(c, USER, [TransferCredits(creator=USER.address, to=key(50 + i).address, amount=10 + i)])
    _send(
        c,
        SERVING,
        [ServingHeartbeat(creator=SERVING.address, endpoint="", adapter_version=i, capacity=4 + i)],
    )
    # Wait for the round to close, then merge its verified update(s).
    while c.current_round().number <= rnd.number:
        time.sleep(0.05)
    if i == 0 and CHEAT.address in subs:
        _lose_a_dispute(c, subs[CHEAT.address])
    if i == 1 and HONEST.address in subs:
        _win_by_default(c, subs[HONEST.address])
    verified = [s.id for s in c.submissions(rnd.number) if s.status == "verified"]
    if verified:
        current = list(c.approved_artifacts(kind="adapter"))
        parent = max((a.version for a in current), default=0)
        # the first round's first proposal is a wrong merge: its validators reject it
        for verdict in ("reject", "accept") if i == 0 else ("accept",):
            sha = _digest(f"adapter{parent + 1}" + ("wrong" if verdict == "reject" else ""))
            _send(
                c,
                PROPOSER,
                [
                    ProposeAdapter(
                        creator=PROPOSER.address,
                        round=rnd.number,
                        adapter_cid=f"bafyadapter{parent + 1}",
                        sha256=sha,
                        size=1000 + i,
                        version=parent + 1,
                        parent_version=parent,
                        submission_ids=tuple(verified),
                    )
                ],
            )
            # checked merge: the validators the ledger assigned judge the proposal
            proposal = c.proposal(rnd.number)
            by_address = {v.address: v for v in (V1, V2, V3)}
            for address in proposal.assigned if proposal else []:
                vote = AttestAdapter(
                    creator=address, round=rnd.number, version=parent + 1, verdict=verdict
                )
                _send(c, by_address[address], [vote])


def _win_by_default(c: BlockchainClient, sid: int) -> None:
    """V3, whose late `reject` contradicts the quorum, disputes the verified submission; the
    accepting side never answers, so V3 wins at the deadline: the first accepting validator
    is slashed, the submission turned over to rejected (its miner slashed)."""
    _send(
        c,
        V3,
        [
            OpenDispute(
                creator=V3.address,
                submission_id=sid,
                steps=4,
                start_digest=_digest("start"),
                final_digest=_digest("v3-final"),
            )
        ],
    )
    _wait_resolved(c, sid)


def _lose_a_dispute(c: BlockchainClient, sid: int) -> None:
    """The cheater challenges its rejection; the first rejecting validator answers its final
    digest and the first midpoint, the cheater never does: it loses when the deadline passes."""
    steps = 4
    _send(
        c,
        CHEAT,
        [
            OpenDispute(
                creator=CHEAT.address,
                submission_id=sid,
                steps=steps,
                start_digest=_digest("start"),
                final_digest=_digest("cheat-final"),
            )
        ],
    )
    dispute = c.dispute(sid)
    if dispute is None:
        return
    respondent = {v.address: v for v in (V1, V2, V3)}[dispute["respondent"]]
    for step, text in ((steps, "final"), (steps // 2, "mid")):
        msg = DisputeCheckpoint(
            creator=respondent.address, dispute_id=sid, step=step, digest=_digest(text)
        )
        _send(c, respondent, [msg])
    _wait_resolved(c, sid)


def _wait_resolved(c: BlockchainClient, sid: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = c.dispute(sid)
        if found is None or found["status"] == "resolved":
            return
        time.sleep(0.05)
    raise AssertionError(f"dispute {sid} was not resolved by its deadline: {c.dispute(sid)}")


# -- comparison ----------------------------------------------------------------------------


def _get(http: httpx.Client, url: str) -> Any:
    response = http.get(url, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return response.json()


def _all_pages(http: httpx.Client, url: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        sep = "&" if "?" in url else "?"
        doc = _get(http, url + (f"{sep}cursor={cursor}" if cursor else ""))
        items.extend(doc["items"])
        cursor = doc["next_cursor"]
        if cursor is None:
            return items


def _same(ledger: dict[str, Any], ours: dict[str, Any], what: str) -> None:
    mine = {k: ours.get(k, "<missing>") for k in ledger}
    assert mine == ledger, f"{what}: explorer {mine} != ledger {ledger}"


def compare(ledger_url: str, explorer_url: str, height: int) -> dict[str, int]:
    """Assert that the explorer's answers equal the ledger's at `height` (which both must
    stand at); returns how many records of each kind were compared."""
    prefix = f"{ledger_url}/remes/remes/v1"
    counts: dict[str, int] = {}
    with httpx.Client() as http:
        status = http.post(ledger_url, json={"jsonrpc": "2.0", "id": 1, "method": "status"}).json()
        assert int(status["result"]["sync_info"]["latest_block_height"]) == height
        stats = _get(http, f"{explorer_url}/api/network/stats")
        assert stats["height"] == height
        ledger_rounds = _get(http, f"{prefix}/rounds?limit=1000")
        assert stats["round"] == ledger_rounds["current_round"]
        ours = {r["number"]: r for r in _all_pages(http, f"{explorer_url}/api/rounds?limit=200")}
        assert sorted(ours) == sorted(r["number"] for r in ledger_rounds["rounds"])
        for r in ledger_rounds["rounds"]:
            _same(r, ours[r["number"]], f"round {r['number']}")
        counts["rounds"] = len(ours)
        subs = _get(http, f"{prefix}/submissions")["submissions"]
        ours = {s["id"]: s for s in _all_pages(http, f"{explorer_url}/api/submissions?limit=200")}
        assert sorted(ours) == [s["id"] for s in subs]
        for s in subs:
            _same(s, ours[s["id"]], f"submission {s['id']}")
        counts["submissions"] = len(subs)
        counts["proposals"] = 0
        for r in ledger_rounds["rounds"]:
            found = http.get(f"{prefix}/proposals/{r['number']}", timeout=10)
            mine = _get(http, f"{explorer_url}/api/rounds/{r['number']}")["proposal"]
            if found.status_code == 404:
                assert mine is None, (r["number"], mine)
                continue
            _same(found.json()["proposal"], mine, f"proposal of round {r['number']}")
            counts["proposals"] += 1
        ours_disputes = {d["id"]: d for d in _all_pages(http, f"{explorer_url}/api/disputes")}
        ledger_disputes = []
        for s in subs:
            found = http.get(f"{prefix}/disputes/{s['id']}", timeout=10)
            if found.status_code != 404:
                ledger_disputes.append(found.json()["dispute"])
        assert sorted(ours_disputes) == [d["id"] for d in ledger_disputes]
        for d in ledger_disputes:
            mirrored = {k: d[k] for k in DISPUTE_FIELDS}
            _same(mirrored, ours_disputes[d["id"]], f"dispute {d['id']}")
        counts["disputes"] = len(ledger_disputes)
        nodes = _get(http, f"{prefix}/nodes?include_inactive=true")["nodes"]
        ours_nodes = {(n["role"], n["address"]): n for n in _get(http, f"{explorer_url}/api/nodes")}
        assert sorted(ours_nodes) == sorted((n["role"], n["address"]) for n in nodes)
        for n in nodes:
            _same(n, ours_nodes[(n["role"], n["address"])], f"node {n['role']}/{n['address']}")
        counts["nodes"] = len(nodes)
        arts = _get(http, f"{prefix}/artifacts?status=all")["artifacts"]
        ours_arts = _get(http, f"{explorer_url}/api/artifacts")
        assert len(ours_arts) == len(arts)
        for a, b in zip(arts, ours_arts, strict=True):
            _same(a, b, f"artifact {a['kind']}/{a['id']}/{a['version']}")
        counts["artifacts"] = len(arts)
        addresses = set()
        txs = _ledger_txs(http, ledger_url, height)
        for t in txs:
            mine = _get(http, f"{explorer_url}/api/txs/{t['hash']}")
            assert (mine["height"], mine["index"], mine["code"], mine["log"], mine["events"]) == (
                int(t["height"]),
                t["index"],
                t["tx_result"]["code"],
                t["tx_result"]["log"],
                t["tx_result"]["events"],
            ), t["hash"]
            addresses.add(mine["signer"])
            for m in mine["msgs"]:
                addresses.update(v for k, v in m.items() if k in ("creator", "to"))
        counts["txs"] = len(txs)
        addresses.discard("")
        for entry in _get(http, f"{prefix}/leaderboard?limit=1000")["leaderboard"]:
            addresses.add(entry["address"])
        for address in sorted(addresses):
            ledger_acc = _get(http, f"{prefix}/accounts/{address}")["account"]
            _same(
                ledger_acc,
                _get(http, f"{explorer_url}/api/accounts/{address}"),
                f"account {address}",
            )
            _same(
                _get(http, f"{prefix}/stake/{address}")["stake"],
                _get(http, f"{explorer_url}/api/stake/{address}"),
                f"stake of {address}",
            )
        counts["accounts"] = len(addresses)
        for h in range(1, height + 1):
            block = http.post(
                ledger_url,
                json={"jsonrpc": "2.0", "id": 1, "method": "block", "params": {"height": str(h)}},
            ).json()["result"]
            mine = _get(http, f"{explorer_url}/api/blocks/{h}")
            assert mine["hash"] == block["block_id"]["hash"].lower(), h
            assert len(mine["txs"]) == len(block["block"]["data"]["txs"]), h
        counts["blocks"] = height
    return counts


def _ledger_txs(http: httpx.Client, ledger_url: str, height: int) -> list[dict[str, Any]]:
    """Every tx of heights 1..height, by asking tx_search height by height (txs only)."""
    out: list[dict[str, Any]] = []
    for h in range(1, height + 1):
        answer = http.post(
            ledger_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tx_search",
                "params": {"query": f"tx.height={h}", "per_page": "100"},
            },
        ).json()["result"]
        out.extend(answer["txs"])
    return out
