"""What `r3mes up` shows: a snapshot of the local network, as a Rich view or log lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from rich.console import RenderableType

    from r3mes.chain.client import BlockchainClient
    from r3mes.paths import Home

STATS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class MinerView:
    name: str
    address: str
    balance: int
    earned: int
    slashed: int
    reputation: int
    verified: int
    rejected: int


@dataclass(frozen=True)
class RoundView:
    number: int
    status: str
    submissions: int
    verified: int
    rejected: int
    proposed_version: int


@dataclass(frozen=True)
class Snapshot:
    height: int
    current_round: int
    rounds: tuple[RoundView, ...]
    miners: tuple[MinerView, ...]
    versions: tuple[dict[str, Any], ...]
    """Adapter versions with held-out loss, from the proposer's /stats."""
    base_loss: float | None
    urls: dict[str, str] = field(default_factory=dict)
    adapter_version: int = 0
    """Latest approved adapter version on the ledger."""
    validator_heights: dict[str, int] = field(default_factory=dict)
    """CometBFT validators' committed heights by node name (-1: not answering); empty on
    the devnet."""

    @property
    def proposals(self) -> int:
        return sum(1 for r in self.rounds if r.proposed_version)

    def line(self) -> str:
        """One plain log line (headless mode)."""
        last = self.versions[-1] if self.versions else None
        loss = f" adapter v{last['version']} loss {last.get('heldout_loss')}" if last else ""
        base = f" (base {self.base_loss:.4f})" if self.base_loss is not None else ""
        subs = sum(r.submissions for r in self.rounds)
        ver = sum(r.verified for r in self.rounds)
        rej = sum(r.rejected for r in self.rounds)
        credits = " ".join(f"{m.name}={m.earned}" for m in self.miners)
        heights = " ".join(
            f"{n}={h if h >= 0 else 'down'}" for n, h in self.validator_heights.items()
        )
        validators = f" | validators {heights}" if heights else ""
        # the counts cover the rounds shown (the last 8), the earnings the whole run
        window = f"rounds {self.rounds[0].number}-{self.rounds[-1].number}: " if self.rounds else ""
        return (
            f"height {self.height} round {self.current_round} | {window}submissions {subs} "
            f"(verified {ver}, rejected {rej}) |{loss}{base} | earned {credits}{validators}"
        )


def _json(url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(url, timeout=STATS_TIMEOUT_S)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def collect(
    client: BlockchainClient,
    *,
    home: Home,
    miners: dict[str, str],
    validator_rpcs: dict[str, str] | None = None,
) -> Snapshot:
    """Read the ledger and the role services' /stats into one snapshot (and, under
    CometBFT, each validator's height from its own RPC)."""
    from r3mes.node.runtime.control import service_statuses

    status = client.status()
    current = client.current_round().number
    subs = client.submissions()
    rounds = []
    for number in range(max(1, current - 7), current + 1):
        rnd = client.round(number)
        mine = [s for s in subs if s.round == number]
        rounds.append(
            RoundView(
                number=number,
                status=rnd.status,
                submissions=len(mine),
                verified=sum(s.status == "verified" for s in mine),
                rejected=sum(s.status == "rejected" for s in mine),
                proposed_version=rnd.proposed_version,
            )
        )
    miner_views = []
    for name, address in sorted(miners.items()):
        acc = client.account(address)
        miner_views.append(
            MinerView(
                name=name,
                address=address,
                balance=acc.balance,
                earned=acc.earned,
                slashed=acc.slashed,
                reputation=acc.reputation,
                verified=sum(s.miner == address and s.status == "verified" for s in subs),
                rejected=sum(s.miner == address and s.status == "rejected" for s in subs),
            )
        )
    urls = {"chain RPC": client.base_url}
    versions: tuple[dict[str, Any], ...] = ()
    base_loss = None
    for item in service_statuses(home):
        if item.info is None or not item.alive or item.info.role == "up":
            continue
        if item.info.role == "backend":
            urls["web dashboard (chat, wallet, keys, network)"] = f"{item.info.url}/"
            urls["paid chat API (OpenAI-compatible)"] = f"{item.info.url}/v1"
            continue
        urls[f"{item.service_id} stats"] = f"{item.info.url}/stats"
        if item.info.role in ("proposer", "serving"):
            stats = _json(f"{item.info.url}/stats") or {}
            if item.info.role == "proposer":
                versions = tuple(stats.get("versions", ()))
                base_loss = stats.get("base_loss")
            elif stats.get("api_url"):
                urls["serving API"] = f"{stats['api_url']}/v1"
    adapters = client.approved_artifacts("adapter")
    heights = {}
    for name, rpc_url in (validator_rpcs or {}).items():
        sync = (_json(f"{rpc_url}/status") or {}).get("result", {}).get("sync_info", {})
        heights[name] = int(sync.get("latest_block_height", -1))
    return Snapshot(
        validator_heights=heights,
        adapter_version=max((a.version for a in adapters), default=0),
        height=status.height,
        current_round=current,
        rounds=tuple(rounds),
        miners=tuple(miner_views),
        versions=versions,
        base_loss=base_loss,
        urls=urls,
    )


def _title(snapshot: Snapshot) -> str:
    if not snapshot.validator_heights:
        return f"R3MES devnet - height {snapshot.height}"
    heights = " ".join(
        f"{n} {h if h >= 0 else 'down'}" for n, h in snapshot.validator_heights.items()
    )
    return f"R3MES on CometBFT - height {snapshot.height} (validators: {heights})"


def render(snapshot: Snapshot) -> RenderableType:
    """The live view: rounds, miners, adapter versions, URLs."""
    from rich.console import Group
    from rich.table import Table

    rounds = Table(
        "round",
        "status",
        "submissions",
        "verified",
        "rejected",
        "adapter",
        title=_title(snapshot),
    )
    for r in snapshot.rounds:
        version = f"v{r.proposed_version}" if r.proposed_version else ""
        rounds.add_row(
            str(r.number), r.status, str(r.submissions), str(r.verified), str(r.rejected), version
        )
    miners = Table(
        "miner", "verified", "rejected", "earned", "slashed", "reputation", title="miners"
    )
    for m in snapshot.miners:
        miners.add_row(
            m.name,
            str(m.verified),
            str(m.rejected),
            str(m.earned),
            str(m.slashed),
            str(m.reputation),
        )
    versions = Table("adapter", "round", "held-out loss", "base loss", title="adapter versions")
    for v in snapshot.versions:
        versions.add_row(
            f"v{v.get('version')}",
            str(v.get("round")),
            str(v.get("heldout_loss")),
            str(v.get("base_loss")),
        )
    urls = Table("service", "url", title="endpoints")
    for name, url in snapshot.urls.items():
        urls.add_row(name, url)
    return Group(rounds, miners, versions, urls)
