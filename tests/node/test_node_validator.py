"""The validator against a real devnet: an unfetchable submission is rejected without
holding up anyone else, a late verdict cannot split the miner's and the validator's
residuals (both use the one committed on the ledger), a validator that judged none of a
miner's earlier work replays its residual from the ledger, and the validator never attests
its own submission."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from support.devnet import running_devnet, tiny_spec
from support.wait import step_until

from r3mes.chain.client import BlockchainClient
from r3mes.chain.client_types import SubmissionInfo
from r3mes.chain.crypto import SigningKey
from r3mes.chain.keystore import Keystore
from r3mes.node.launch import RoleLaunch, build_miner, build_validator
from r3mes.node.localnet.setup import passphrase
from r3mes.node.miner.journal import TxState
from r3mes.node.miner.miner import Miner
from r3mes.node.miner.residual import fetch_residual
from r3mes.node.registration import ensure_registered
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.node.validator import Validator
from r3mes.paths import Home
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.unixfs import compute_cid
from r3mes.work.profile import WorkProfile
from r3mes.work.task import HyperParams

SETTLE_ROUNDS = 1


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    profile = WorkProfile(
        hyper=HyperParams(lr="0.005", steps=2, batch_size=2, seq_len=32, topk_ppm=50_000),
        eval_chunks=4,
        settle_rounds=SETTLE_ROUNDS,
    )
    # the validator is offline for several rounds here: keep the attestation window open
    spec = tiny_spec(tmp_path, miners=2, profile=profile, attestation_rounds=50)
    with running_devnet(spec) as running:
        yield running


def _launch(home: Home, url: str, name: str) -> RoleLaunch:
    return RoleLaunch(
        name=name, home=home, chain_url=url, key_name=name, passphrase=passphrase(home)
    )


def _miner(home: Home, url: str, name: str) -> Miner:
    return build_miner(
        _launch(home, url, name), retry=RetryPolicy(max_retries=1, initial_delay=0.2)
    )


def _validator(home: Home, url: str, name: str) -> Validator:
    # full re-execution: these tests time residual settlement to verdicts within the
    # submission's own round; spot checks wait for the next round's seed
    # (tests/node/test_node_spot_validator.py)
    return build_validator(_launch(home, url, name), spot_ppm=1_000_000)


def _key(home: Home, name: str) -> SigningKey:
    return Keystore(home.keys).load(name, passphrase=passphrase(home))


def _bogus_submission(
    client: BlockchainClient, key: SigningKey, tag: bytes, *, cid: str | None = None
) -> SubmissionInfo:
    """Submit, signed by `key`, a CID whose bytes nobody stores (or `cid`); returns it as
    recorded."""
    from r3mes.chain.errors import TxRejected

    ensure_registered(client, key, role="miner", endpoint="http://127.0.0.1:9", stake=10)
    data = b"bytes nobody stores " + tag
    for attempt in range(3):  # a round may close between reading it and submitting
        number = client.current_round().number
        try:
            client.submit_gradient(
                key,
                round_number=number,
                cid=cid or compute_cid(data, cid_version=1),
                digest=hashlib.sha256(data).hexdigest(),
            )
            break
        except TxRejected:
            if attempt == 2:
                raise
    return next(s for s in client.submissions(number) if s.miner == key.address)


def _subs_of(client: BlockchainClient, miner: str) -> list[SubmissionInfo]:
    return [s for s in client.submissions() if s.miner == miner]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unfetchable_and_late_submissions_leave_honest_miner_verified(
    chain: tuple[Home, str],
) -> None:
    home, url = chain
    miner = _miner(home, url, "miner-1")
    validator = _validator(home, url, "validator-1")
    validator.settings = replace(
        validator.settings, fetch_retry=RetryPolicy(max_retries=2, initial_delay=0.2)
    )
    client = miner.client
    miner.on_start()
    validator.on_start()
    try:
        # Phase 1, validator offline: miner-1's first submission stays pending past its
        # deadline, so the miner drops its residual and mines on; miner-2 (stopped) has an
        # unfetchable update on the ledger, and the validator's own key submits one too.
        bogus = _bogus_submission(client, _key(home, "miner-2"), b"miner-2")
        own = _bogus_submission(client, validator.key, b"validator")

        def committed() -> int:
            return sum(r.state is TxState.COMMITTED for r in miner.journal.recent(50))

        step_until(lambda: committed() >= 2, miner.step, timeout=180, what="2 commits")
        first, second = sorted(_subs_of(client, miner.address), key=lambda s: s.id)
        assert second.round > first.round + SETTLE_ROUNDS, "the miner waited out the deadline"
        assert first.status == "pending"

        # Phase 2, validator online: every step judges what it can, the unfetchable update
        # backs off alone and is rejected; the late verdict on `first` must not move the
        # validator's residual, or `second` and every later update would be rejected.
        def settled() -> bool:
            subs = {s.id: s for s in client.submissions()}
            mined = _subs_of(client, miner.address)
            return (
                subs[bogus.id].status == "rejected"
                and len([s for s in mined if s.status == "verified"]) >= 3
            )

        step_until(settled, validator.step, miner.step, timeout=240, what="settlement")
        subs = {s.id: s for s in client.submissions()}
        assert "could not be fetched" in (validator.verdicts.reason(bogus.id) or "")
        mined = _subs_of(client, miner.address)
        assert not [s for s in mined if s.status == "rejected"], "no honest update rejected"
        assert subs[second.id].status == "verified"
        assert client.account(miner.address).slashed == 0

        # the residual the miner holds is the one it committed on the ledger, which is
        # what every validator replays
        assert miner._settled()
        ours, base = miner.residuals.load_base()
        on_ledger = client.submission(base)
        assert on_ledger.miner == miner.address and on_ledger.status == "verified"
        theirs = fetch_residual(
            validator.store, cid=on_ledger.residual_cid, digest=on_ledger.residual_digest
        )
        assert ours.keys() == theirs.keys() and ours
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)

        # never its own work: the validator's own submission got no verdict from it
        assert subs[own.id].status == "pending" and subs[own.id].attestations == []
        assert validator.verdicts.get(own.id) is None
    finally:
        miner.on_stop()
        validator.on_stop()


def _dag_pb_node(links: list[tuple[str, int]]) -> tuple[str, bytes]:
    from r3mes.storage.multiformats import DAG_PB, Cid, parse_cid
    from r3mes.storage.unixfs import UNIXFS_FILE, Link, encode_pbnode, encode_unixfs

    sizes = [size for _, size in links]
    data = encode_unixfs(kind=UNIXFS_FILE, data=b"", filesize=sum(sizes), blocksizes=sizes)
    block = encode_pbnode(links=[Link(parse_cid(c), 1, s) for c, s in links], data=data)
    return str(Cid.of_block(block, version=1, codec=DAG_PB)), block


def _diamond(store: Blockstore, levels: int = 6) -> str:
    """A crafted DAG: `levels` nodes each linking 174 times to the one below (174**(levels-1)
    reads of an empty leaf); returns its root CID."""
    from r3mes.storage.multiformats import RAW, Cid

    child = str(Cid.of_block(b"", version=1, codec=RAW))
    store.put_block(child, b"")
    for _ in range(levels):
        child, block = _dag_pb_node([(child, 0)] * 174)
        store.put_block(child, block)
    return child


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_crafted_dag_is_rejected_on_the_first_attempt(
    chain: tuple[Home, str], caplog: pytest.LogCaptureFixture
) -> None:
    """It used to be retried `max_retries` times with backoff before the rejection: with 30 s
    between attempts this test would time out."""
    home, url = chain
    validator = _validator(home, url, "validator-1")
    validator.settings = replace(
        validator.settings, fetch_retry=RetryPolicy(max_retries=3, initial_delay=30.0)
    )
    root = _diamond(Blockstore(validator.settings.blocks))
    crafted = _bogus_submission(validator.client, _key(home, "miner-2"), b"x", cid=root)
    validator.on_start()
    try:

        def rejected() -> bool:
            subs = {s.id: s for s in validator.client.submissions()}
            return subs[crafted.id].status == "rejected"

        step_until(rejected, validator.step, timeout=120, what="the rejection")
        reason = validator.verdicts.reason(crafted.id) or ""
    finally:
        validator.on_stop()
    assert "unusable" in reason and "repeat or chain" in reason
    assert f"submission {crafted.id}: attempt" not in caplog.text  # no retry, no backoff


def test_an_update_that_can_never_be_read_is_unusable_at_once(tmp_path: Path) -> None:
    """A malformed DAG is fixed by its CID like an invalid CID or an oversized file: the
    validator rejects it on the first attempt instead of retrying it `max_retries` times."""
    from r3mes.node.validator import UpdateUnavailable, UpdateUnusable, read_update
    from r3mes.storage.multiformats import DAG_PB, Cid

    store = Blockstore(tmp_path / "blocks")
    good = b"an update"
    cid = store.add_bytes(good)
    assert read_update(store, cid=cid, digest=hashlib.sha256(good).hexdigest()) == good

    child = _diamond(store)
    # a dag-pb block whose bytes hash to its CID but decode to nothing
    garbage = b"\xff\xff not protobuf"
    bad = str(Cid.of_block(garbage, version=1, codec=DAG_PB))
    store.put_block(bad, garbage)

    for unusable, why in (
        (child, "repeat or chain"),
        (bad, "malformed"),
        ("not-a-cid", "invalid CID"),
        (cid, "do not match the submitted digest"),
    ):
        with pytest.raises(UpdateUnusable, match=why):
            read_update(store, cid=unusable, digest="00" * 32)
    # blocks nobody has (yet) may still arrive: that one is retried
    missing = compute_cid(b"bytes nobody stores", cid_version=1)
    with pytest.raises(UpdateUnavailable):
        read_update(store, cid=missing, digest="00" * 32)


@pytest.fixture
def two_validators(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    profile = WorkProfile(
        hyper=HyperParams(lr="0.005", steps=2, batch_size=2, seq_len=32, topk_ppm=50_000),
        eval_chunks=4,
        settle_rounds=SETTLE_ROUNDS,
    )
    spec = tiny_spec(tmp_path, miners=1, profile=profile, validators=2, quorum=1)
    with running_devnet(spec) as running:
        yield running


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_validator_that_missed_earlier_work_replays_the_residual_from_the_ledger(
    two_validators: tuple[Home, str],
) -> None:
    from r3mes.node.miner.residual import encode_residual, residual_digest
    from r3mes.work.verify import Verdict

    home, url = two_validators
    miner = _miner(home, url, "miner-1")
    first_judge = _validator(home, url, "validator-1")
    late_judge = _validator(home, url, "validator-2")
    client = miner.client
    miner.on_start()
    first_judge.on_start()
    try:
        # validator-1 alone judges the miner's first update, whose residual is committed
        def first_verified() -> bool:
            return any(s.status == "verified" for s in _subs_of(client, miner.address))

        step_until(first_verified, first_judge.step, miner.step, timeout=150, what="verified")
        first = _subs_of(client, miner.address)[0]
        assert first.residual_cid and first.base_submission_id == 0
        assert first.assigned == [first_judge.address]

        # validator-2 joins; it never saw `first`, and validator-1 stops judging
        late_judge.on_start()

        def based_on_first() -> list[SubmissionInfo]:
            return [s for s in _subs_of(client, miner.address) if s.base_submission_id]

        step_until(lambda: bool(based_on_first()), miner.step, timeout=120, what="2nd submit")
        (second,) = based_on_first()
        assert second.base_submission_id == first.id
        assert late_judge.address in second.assigned

        def second_settled() -> bool:
            return client.submission(second.id).status != "pending"

        step_until(second_settled, late_judge.step, timeout=120, what="late judge's verdict")
        settled = client.submission(second.id)
        assert settled.status == "verified", late_judge.verdicts.reason(second.id)
        assert late_judge.verdicts.get(first.id) is None  # it never judged the first
        assert "digest matches" in (late_judge.verdicts.reason(second.id) or "")

        # a residual commitment that is not what the update leaves behind is rejected
        replayed = fetch_residual(
            late_judge.store, cid=settled.residual_cid, digest=settled.residual_digest
        )
        ok = Verdict(True, "digest matches re-execution", 0.0, True, replayed)
        assert residual_digest(encode_residual(replayed)) == settled.residual_digest
        assert late_judge.check_residual(settled, ok).accepted
        lying = replace(settled, residual_digest="00" * 32)
        judged = late_judge.check_residual(lying, ok)
        assert not judged.accepted and "residual" in judged.reason
    finally:
        miner.on_stop()
        first_judge.on_stop()
        late_judge.on_stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_checked_merge_slashes_a_lying_proposer_and_approves_the_honest_version(
    chain: tuple[Home, str],
) -> None:
    from r3mes.chain.msgs import ProposeAdapter, RegisterNode
    from r3mes.node.launch import build_proposer

    home, url = chain
    miner = _miner(home, url, "miner-1")
    validator = _validator(home, url, "validator-1")
    proposer = build_proposer(_launch(home, url, "proposer-1"))
    client = miner.client
    for role in (miner, validator, proposer):
        role.on_start()
    try:

        def verified_round() -> int:
            for s in _subs_of(client, miner.address):
                if s.status == "verified" and client.round(s.round).status == "closed":
                    return s.round
            return 0

        step_until(lambda: verified_round() > 0, miner.step, validator.step, timeout=150, what="v")
        number = verified_round()
        sid = next(s.id for s in _subs_of(client, miner.address) if s.round == number)
        # the proposer bonds stake, then its key proposes bytes that are not the merge
        bond = RegisterNode(creator=proposer.address, role="proposer", stake=100)
        client.sign_and_broadcast(proposer.key, [bond])
        forged = b"not the merge of anything"
        lie = ProposeAdapter(
            creator=proposer.address,
            round=number,
            adapter_cid=compute_cid(forged, cid_version=1),
            sha256=hashlib.sha256(forged).hexdigest(),
            size=len(forged),
            version=1 + max((a.version for a in client.approved_artifacts("adapter")), default=0),
            parent_version=max(
                (a.version for a in client.approved_artifacts("adapter")), default=0
            ),
            submission_ids=(sid,),
        )
        client.sign_and_broadcast(proposer.key, [lie])
        pending = client.proposal(number)
        assert pending is not None and pending.status == "pending"
        assert pending.assigned == [validator.address]

        def decided() -> bool:
            prop = client.proposal(number)
            return prop is not None and prop.status != "pending"

        step_until(decided, validator.step, timeout=120, what="the validator's re-merge")
        rejected = client.proposal(number)
        assert rejected is not None and rejected.status == "rejected"
        assert client.account(proposer.address).slashed == client.params().slash_amount
        assert client.round(number).proposed_version == 0

        # the honest proposer's version of the same round is re-merged and approved
        def approved() -> bool:
            return client.round(number).proposed_version > 0

        step_until(approved, proposer.step, validator.step, timeout=150, what="approval")
        honest = client.proposal(number)
        assert honest is not None and honest.status == "approved"
        record = max(client.approved_artifacts("adapter"), key=lambda a: a.version)
        assert (record.version, record.cid, record.sha256) == (
            honest.version,
            honest.cid,
            honest.sha256,
        )
    finally:
        for role in (miner, validator, proposer):
            role.on_stop()
