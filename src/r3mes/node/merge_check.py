"""Checked merges: the one function that turns a round's verified updates into the bytes of
the next adapter version, used by the proposer to build it and by validators to check it.

`build_version` merges the listed updates (sorted by submission id) into the parent version
with `r3mes.work.versions.merge_updates` and packages them with `package_adapter`, both
deterministic, so every honest party gets the same bytes, digest and CID. A validator
assigned to a proposal rebuilds it from the ledger's record (`rebuild_proposal`) and accepts
it only when its own bytes hash to the proposal's sha256 and CID.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r3mes.node.errors import NetworkError, NodeError
from r3mes.work.profile import WorkProfile, derive_task
from r3mes.work.versions import AdapterInfo, merge_updates, package_adapter, start_adapter

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.client_types import ProposalInfo, RoundInfo, SubmissionInfo
    from r3mes.node.artifacts import ArtifactCache, BlobStore
    from r3mes.work.task import Task

MAX_UPDATE_BYTES = 64 << 20


@dataclass(frozen=True)
class BuiltVersion:
    bundle: bytes
    sha256: str
    merged: dict[str, Any]
    task: Task
    model: Any
    info: AdapterInfo


def fetch_update(store: BlobStore, sub: SubmissionInfo) -> bytes:
    """A verified update's bytes, checked against the digest the ledger holds."""
    try:
        data = store.get_bytes(sub.cid, max_size=MAX_UPDATE_BYTES)
    except Exception as exc:
        raise NetworkError(f"cannot fetch verified update {sub.cid}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sub.digest:
        raise NodeError(f"update {sub.cid} does not match its digest {sub.digest}")
    return data


def build_version(
    *,
    rnd: RoundInfo,
    verified: list[SubmissionInfo],
    parent_version: int,
    parent_cid: str | None,
    artifacts: ArtifactCache,
    store: BlobStore,
    profile: WorkProfile,
) -> BuiltVersion:
    """The bundle of version `parent_version + 1`: `verified` merged into the parent."""
    subs = sorted(verified, key=lambda s: s.id)
    if not subs:
        raise NodeError(f"round {rnd.number}: no verified update to merge")
    first = subs[0]
    task = derive_task(
        round_number=rnd.number,
        seed_hex=rnd.seed,
        miner=first.miner,
        shard=first.shard,
        n_shards=rnd.shards_per_round,
        base_model_cid=rnd.base_model_cid,
        dataset_cid=rnd.dataset_cid,
        adapter_cid=rnd.adapter_cid,
        profile=profile,
    )
    model = artifacts.model(task.base_model_cid)
    loaded = artifacts.adapter(parent_cid)[0] if parent_cid else None
    base_state = start_adapter(task, loaded, model)
    merged = merge_updates(base_state, [fetch_update(store, s) for s in subs])
    info = AdapterInfo(
        version=parent_version + 1,
        parent_version=parent_version,
        round=rnd.number,
        base_model_cid=task.base_model_cid,
        submission_ids=tuple(s.id for s in subs),
        update_digests=tuple(s.digest for s in subs),
    )
    h = profile.hyper
    bundle = package_adapter(
        merged, lora_r=h.rank, lora_alpha=h.alpha, targets=h.target_modules, info=info
    )
    return BuiltVersion(bundle, hashlib.sha256(bundle).hexdigest(), merged, task, model, info)


def rebuild_proposal(
    prop: ProposalInfo,
    *,
    client: BlockchainClient,
    artifacts: ArtifactCache,
    store: BlobStore,
    profile: WorkProfile,
) -> tuple[bool, str]:
    """(accept, reason): whether `prop`'s bytes are the merge of the updates it lists."""
    from r3mes.storage.unixfs import compute_cid

    rnd = client.round(prop.round)
    wanted = set(prop.submission_ids)
    subs = [s for s in client.submissions(prop.round) if s.id in wanted]
    if len(subs) != len(wanted) or any(s.status != "verified" for s in subs):
        return False, "the proposal lists updates that are not verified ones of its round"
    parent_cid: str | None = None
    if prop.parent_version:
        adapter_id = client.params().adapter_id
        parents = [
            a
            for a in client.approved_artifacts("adapter")
            if a.id == adapter_id and a.version == prop.parent_version
        ]
        if not parents:
            return False, f"parent version {prop.parent_version} is not an approved adapter"
        parent_cid = parents[0].cid
    built = build_version(
        rnd=rnd,
        verified=subs,
        parent_version=prop.parent_version,
        parent_cid=parent_cid,
        artifacts=artifacts,
        store=store,
        profile=profile,
    )
    if built.sha256 != prop.sha256:
        return False, f"re-merged adapter sha256 {built.sha256[:16]}... is not the proposal's"
    if compute_cid(built.bundle, cid_version=1) != prop.cid:
        return False, "the proposal's CID does not name the re-merged bytes"
    return True, "re-merged adapter matches the proposal"
