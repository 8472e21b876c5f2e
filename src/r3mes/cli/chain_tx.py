"""`r3mes tx`: build, check, sign and broadcast every ledger message.

A tx command refuses bad input before anything is sent: option callbacks check each
value (a usage error naming the flag), `validate_basic` - the chain's own stateless rules -
checks the message, and then the ledger itself simulates the signed tx in its next block
(`simulate_tx`: roles, open rounds, shards, balance, authority are the ledger's rules, not
copies of them here). A refused command changes nothing on chain.
Each prints the committed tx as JSON: hash, height and the events (ids the chain assigned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from r3mes.chain.vocab import KINDS, ROLES, VERDICTS, one_of
from r3mes.cli.chain_shared import (
    DEFAULT_NODE,
    CliError,
    HomeOpt,
    NodeOpt,
    PassOpt,
    client_of,
    home_of,
    load_key,
    print_json,
)

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.msgs import ArtifactSpec, Msg, SubmitGradient

tx_app = typer.Typer(help="Sign and broadcast ledger transactions.")

Msg_ = TypeVar("Msg_", bound="Msg")
FromOpt = Annotated[str, typer.Option("--from", help="Name of the signing key in the wallet.")]


def _check_address(value: str) -> str:
    from r3mes.chain.crypto import validate_address
    from r3mes.chain.errors import AddressError

    if value == "":
        return value
    try:
        return validate_address(value)
    except AddressError as exc:
        raise typer.BadParameter(
            f"{exc}; an address looks like remes1... (`r3mes wallet show`)"
        ) from exc


def _check_cid(value: str | None) -> str | None:
    from r3mes.storage.multiformats import is_cid

    if value is None or (is_cid(value) and value.isalnum()):
        return value
    raise typer.BadParameter(
        f"{value[:80]!r} is not a CID (bafy... or Qm...); `r3mes storage cid FILE` computes one"
    )


def _check_hex64(value: str | None) -> str | None:
    if value is None or (len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())):
        return None if value is None else value.lower()
    raise typer.BadParameter("must be 64 hex digits (a SHA-256, e.g. from `sha256sum FILE`)")


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def _send(
    *,
    node: str,
    home: Path | None,
    sender: str,
    passphrase: str,
    build: Callable[[BlockchainClient, str], Msg_],
) -> dict[str, Any]:
    """Decrypt the key, build the message against the chain, check it, sign, broadcast.

    Returns the committed tx as JSON: hash, height and its events (ids the chain assigned).
    """
    from r3mes.chain.errors import TxInvalid
    from r3mes.chain.msgs import validate_basic

    key = load_key(home, sender, passphrase)
    with client_of(node) as client:
        msg = build(client, key.address)
        try:
            validate_basic(msg)
        except TxInvalid as exc:
            raise CliError(f"not sent: {exc.log}; fix that value and retry") from exc
        check = client.simulate(key, [msg])
        if check.code != 0:
            raise CliError(f"not sent: the ledger refuses it: {check.log}{_hint(check.code)}")
        result = client.sign_and_broadcast(key, [msg])
    events = [
        {"type": e.get("type"), **{a["key"]: a["value"] for a in e.get("attributes", [])}}
        for e in result.events
        if e.get("type") != "message"
    ]
    return {"hash": result.hash, "height": result.height, "events": events}


def _hint(code: int) -> str:
    """What to do about a refusal, by its code (the ledger's log says what was wrong)."""
    from r3mes.chain.codes import Code

    hints = {
        Code.INSUFFICIENT_FUNDS: "get credits first (on a devnet: `r3mes tx faucet`)",
        Code.NOT_PERMITTED: "`r3mes query account ADDRESS` lists the roles; "
        "`r3mes tx register-node --role ROLE` registers one",
        Code.WRONG_ROUND: "`r3mes query round` shows the current round",
        Code.WRONG_SHARD: "leave out --shard to take the one the ledger assigns",
        Code.DUPLICATE: "`r3mes query tasks` and `r3mes query submissions` show what is taken",
    }
    try:
        hint = hints.get(Code(code))
    except ValueError:  # a code this CLI does not know yet
        return ""
    return f"; {hint}" if hint else ""


@tx_app.command("faucet")
def tx_faucet(
    sender: FromOpt,
    passphrase: PassOpt,
    amount: Annotated[int, typer.Option(min=1, help="Credits to mint (devnet only).")] = 1000,
    to: Annotated[
        str, typer.Option(callback=_check_address, help="Recipient (default: the signer).")
    ] = "",
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Mint devnet credits to an address."""
    from r3mes.chain.msgs import Faucet

    def build(client: BlockchainClient, address: str) -> Faucet:
        return Faucet(creator=address, to=to or address, amount=amount)

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("transfer")
def tx_transfer(
    sender: FromOpt,
    passphrase: PassOpt,
    to: Annotated[str, typer.Option(callback=_check_address, help="Recipient address.")],
    amount: Annotated[int, typer.Option(min=1, help="Credits to send.")],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Send credits to another address."""
    from r3mes.chain.msgs import TransferCredits

    def build(client: BlockchainClient, address: str) -> TransferCredits:
        return TransferCredits(creator=address, to=to, amount=amount)

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("attest-adapter")
def tx_attest_adapter(
    sender: FromOpt,
    passphrase: PassOpt,
    round_number: Annotated[int, typer.Argument(min=1, help="Round the version was proposed for.")],
    version: Annotated[int, typer.Argument(min=1, help="Proposed adapter version.")],
    verdict: Annotated[str, typer.Argument(callback=_choice(*VERDICTS), help="accept or reject.")],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Attest a proposed adapter version as an assigned validator (checked merge)."""
    from r3mes.chain.msgs import AttestAdapter

    def build(client: BlockchainClient, address: str) -> AttestAdapter:
        return AttestAdapter(
            creator=address,
            round=round_number,
            version=version,
            verdict=one_of(verdict, VERDICTS, "VERDICT"),
        )

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("unbond")
def tx_unbond(
    sender: FromOpt,
    passphrase: PassOpt,
    role: Annotated[
        str, typer.Option(callback=_choice(*ROLES), help="miner, validator, proposer or serving.")
    ],
    amount: Annotated[int, typer.Option(min=1, help="Credits of stake to unbond.")],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Start unbonding stake; `withdraw` pays it after the genesis delay (slashable until)."""
    from r3mes.chain.msgs import Unbond

    def build(client: BlockchainClient, address: str) -> Unbond:
        return Unbond(creator=address, role=one_of(role, ROLES, "--role"), amount=amount)

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("withdraw")
def tx_withdraw(
    sender: FromOpt,
    passphrase: PassOpt,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Pay out the signer's unbonded stake whose delay has passed."""
    from r3mes.chain.msgs import Withdraw

    def build(client: BlockchainClient, address: str) -> Withdraw:
        return Withdraw(creator=address)

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("register-node")
def tx_register_node(
    sender: FromOpt,
    passphrase: PassOpt,
    role: Annotated[
        str,
        typer.Option(
            callback=_choice(*ROLES),
            help="miner, validator, proposer or serving.",
        ),
    ],
    endpoint: Annotated[str, typer.Option(help="Public URL of the node, if any.")] = "",
    stake: Annotated[int, typer.Option(min=0, help="Credits to lock as stake.")] = 0,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Register the signer as a node of a role (again: add stake, change the endpoint)."""
    from r3mes.chain.msgs import RegisterNode

    def build(client: BlockchainClient, address: str) -> RegisterNode:
        return RegisterNode(
            creator=address, role=one_of(role, ROLES, "--role"), endpoint=endpoint, stake=stake
        )

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("submit-gradient")
def tx_submit_gradient(
    sender: FromOpt,
    passphrase: PassOpt,
    cid: Annotated[str, typer.Option(callback=_check_cid, help="CID of the stored update.")],
    digest: Annotated[
        str, typer.Option(callback=_check_hex64, help="Digest of the update (64 hex).")
    ],
    round_number: Annotated[
        int, typer.Option("--round", min=0, help="Round number; 0 = the current round.")
    ] = 0,
    shard: Annotated[
        int | None,
        typer.Option(min=0, help="Shard to claim; default: the one the ledger assigns you."),
    ] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Claim your assigned shard with a trained update; finds the proof-of-work nonce."""
    from r3mes.chain.client import round_assigned_shard
    from r3mes.chain.msgs import SubmitGradient

    def build(client: BlockchainClient, address: str) -> SubmitGradient:
        rnd = client.round(round_number) if round_number else client.current_round()
        chosen = round_assigned_shard(rnd, address) if shard is None else shard
        msg = SubmitGradient(
            creator=address, round=rnd.number, shard=chosen, cid=cid, digest=digest
        )
        difficulty = client.params().pow_difficulty
        return _solve_pow(msg, chain_id=client.chain_id(), difficulty=difficulty)

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


def _solve_pow(msg: SubmitGradient, *, chain_id: str, difficulty: int) -> SubmitGradient:
    """solve_pow with a spinner on stderr (expected 2**difficulty hashes)."""
    from r3mes.chain.pow import solve_pow

    expected = 1 << difficulty
    with Console(stderr=True).status(f"proof of work: ~{expected:,} hashes expected") as status:

        def progress(attempts: int) -> None:
            status.update(f"proof of work: {attempts:,} of ~{expected:,} expected hashes")

        return solve_pow(msg, chain_id=chain_id, difficulty=difficulty, on_progress=progress)


@tx_app.command("attest")
def tx_attest(
    sender: FromOpt,
    passphrase: PassOpt,
    submission_id: Annotated[int, typer.Argument(min=1, help="Submission id.")],
    verdict: Annotated[str, typer.Argument(callback=_choice(*VERDICTS), help="accept or reject.")],
    distance: Annotated[
        float,
        typer.Option(min=0.0, help="Relative distance the check measured (0 = identical)."),
    ] = 0.0,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Attest a submission as a validator: accept or reject, with the measured distance."""
    import math

    from r3mes.chain.msgs import Attest

    if not math.isfinite(distance):
        raise typer.BadParameter("must be a finite number", param_hint="'--distance'")
    ppm = min(int(min(distance, 1e6) * 1_000_000), 10**12)  # as the validator role does

    def build(client: BlockchainClient, address: str) -> Attest:
        return Attest(
            creator=address,
            submission_id=submission_id,
            verdict=one_of(verdict, VERDICTS, "VERDICT"),
            distance_ppm=ppm,
        )

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


# -- tx: artifacts --------------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """An artifact's bytes as a record names them, and how to read them again."""

    cid: str
    sha256: str
    size: int
    pieces: Callable[[], Iterator[bytes]] | None = None
    """Re-reads the bytes (for --add); None when only --cid/--sha256/--size were given."""


ContentPath = Annotated[
    Path | None,
    typer.Argument(
        help="File or folder to compute CID, SHA-256 and size from (instead of the flags)."
    ),
]
CidOpt = Annotated[
    str | None, typer.Option("--cid", callback=_check_cid, help="CID of the content.")
]
ShaOpt = Annotated[
    str | None,
    typer.Option("--sha256", callback=_check_hex64, help="SHA-256 of the content (64 hex)."),
]
SizeOpt = Annotated[int | None, typer.Option("--size", min=1, help="Size in bytes.")]
KindArg = Annotated[str, typer.Argument(callback=_choice(*KINDS), help="model|dataset|adapter")]
AddOpt = Annotated[
    bool, typer.Option("--add", help="Also store PATH in the local blockstore (pinned).")
]


def _pieces_of(path: Path, *, kind: str) -> Callable[[], Iterator[bytes]]:
    """The artifact bytes of `path`: a dataset file as it is; a model or adapter folder as
    the bundle `r3mes registry pull` unpacks (or a file that already is such a bundle)."""
    import tarfile

    from r3mes.registry.bundle import pack_dir

    if path.is_dir():
        if kind == "dataset":
            raise CliError(f"a dataset is one file, and {path} is a folder")
        bundle = pack_dir(path)
        return lambda: iter([bundle])
    if not path.is_file():
        raise CliError(f"{path} is not a file or folder; check the path")
    if kind != "dataset" and not tarfile.is_tarfile(path):
        raise CliError(f"a {kind} is a folder or its bundle (a tar); {path} is neither")

    def read() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while piece := handle.read(1 << 20):
                yield piece

    return read


def _content(
    path: Path | None, *, kind: str, cid: str | None, sha256: str | None, size: int | None
) -> _Content:
    """The content from PATH (CID as `ipfs add --cid-version=1` gives it) or from the flags."""
    import hashlib

    from r3mes.storage.unixfs import DagParams, build_dag, root_of

    if path is None:
        if cid is None or sha256 is None or size is None:
            raise CliError("give a FILE/DIR path, or all three of --cid, --sha256 and --size")
        return _Content(cid, sha256, size)
    if cid is not None or sha256 is not None or size is not None:
        raise CliError("give either a FILE/DIR path or --cid/--sha256/--size, not both")
    pieces = _pieces_of(path, kind=kind)
    digest = hashlib.sha256()
    total = 0

    def counted() -> Iterator[bytes]:
        nonlocal total
        for piece in pieces():
            digest.update(piece)
            total += len(piece)
            yield piece

    try:
        root = str(root_of(build_dag(counted(), DagParams(cid_version=1))))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if total == 0:
        raise CliError(f"{path} is empty; an artifact needs at least one byte")
    return _Content(root, digest.hexdigest(), total, pieces)


def _store(home: Path | None, content: _Content) -> str:
    """Add the content to the local blockstore (pinned); returns its CID."""
    from r3mes.storage.blockstore import Blockstore

    if content.pieces is None:
        raise CliError("--add needs a FILE/DIR path to read the content from")
    stored = Blockstore(home_of(home).blocks).add_stream(content.pieces(), pin=True)
    if stored != content.cid:
        raise CliError(f"the content changed while it was registered ({content.cid} -> {stored})")
    return stored


@tx_app.command("register-artifact")
def tx_register_artifact(
    sender: FromOpt,
    passphrase: PassOpt,
    kind: KindArg,
    artifact_id: Annotated[str, typer.Argument(help="Artifact id, e.g. bitnet-b1.58-tiny.")],
    version: Annotated[int, typer.Argument(min=1, help="Version number (1, 2, ...).")],
    path: ContentPath = None,
    cid: CidOpt = None,
    sha256: ShaOpt = None,
    size: SizeOpt = None,
    add: AddOpt = False,
    base_model_id: Annotated[str, typer.Option(help="Adapters: id of the base model.")] = "",
    base_model_version: Annotated[
        int, typer.Option(min=0, help="Adapters: version of the base model.")
    ] = 0,
    target_module: Annotated[
        list[str] | None, typer.Option(help="Adapters: a module the LoRA wraps (repeatable).")
    ] = None,
    rank: Annotated[int, typer.Option(min=0, max=4096, help="Adapters: LoRA rank.")] = 0,
    hf_repo: Annotated[str, typer.Option(help="Hugging Face repo with the same file.")] = "",
    hf_revision: Annotated[str, typer.Option(help="Commit of that repo.")] = "",
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Register a model, dataset or adapter (pending until the authority approves it)."""
    from r3mes.chain.msgs import ArtifactSpec, RegisterArtifact

    content = _content(path, kind=kind, cid=cid, sha256=sha256, size=size)
    spec = ArtifactSpec(
        kind=one_of(kind, KINDS, "KIND"),
        id=artifact_id,
        version=version,
        cid=content.cid,
        sha256=content.sha256,
        size=content.size,
        base_model_id=base_model_id,
        base_model_version=base_model_version,
        target_modules=tuple(target_module or ()),
        rank=rank,
        hf_repo=hf_repo,
        hf_revision=hf_revision,
    )
    _check_installable(spec)

    def build(client: BlockchainClient, address: str) -> RegisterArtifact:
        return RegisterArtifact(creator=address, artifact=spec)

    doc = _send(node=node, home=home, sender=sender, passphrase=passphrase, build=build)
    stored = _store(home, content) if add else None
    print_json({**doc, "artifact": asdict(spec), "stored": stored})


def _check_installable(spec: ArtifactSpec) -> None:
    """Refuse a record `r3mes registry` would reject after approval (its rules are stricter)."""
    from r3mes.registry.records import ArtifactRecord, InvalidArtifactRecord, installable

    try:
        installable(ArtifactRecord.from_spec(spec))
    except InvalidArtifactRecord as exc:
        raise CliError(f"{exc.field} {exc.reason}; the registry could not install it") from exc


@tx_app.command("approve-artifact")
def tx_approve_artifact(
    sender: FromOpt,
    passphrase: PassOpt,
    kind: KindArg,
    artifact_id: Annotated[str, typer.Argument(help="Artifact id.")],
    version: Annotated[int, typer.Argument(min=1, help="Version number.")],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Approve a registered artifact (the genesis authority only); it becomes the active one."""
    from r3mes.chain.msgs import ApproveArtifact

    def build(client: BlockchainClient, address: str) -> ApproveArtifact:
        return ApproveArtifact(
            creator=address, kind=one_of(kind, KINDS, "KIND"), id=artifact_id, version=version
        )

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))


@tx_app.command("propose-adapter")
def tx_propose_adapter(
    sender: FromOpt,
    passphrase: PassOpt,
    round_number: Annotated[int, typer.Option("--round", min=1, help="The closed round.")],
    submission: Annotated[
        list[int], typer.Option(min=1, help="A verified submission merged in (repeatable).")
    ],
    path: ContentPath = None,
    cid: CidOpt = None,
    sha256: ShaOpt = None,
    size: SizeOpt = None,
    add: AddOpt = False,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Propose the next adapter version merged from a closed round's verified submissions."""
    from r3mes.chain.msgs import ProposeAdapter

    content = _content(path, kind="adapter", cid=cid, sha256=sha256, size=size)
    if add and content.pieces is None:
        raise CliError("--add needs a FILE/DIR path to read the content from")

    def build(client: BlockchainClient, address: str) -> ProposeAdapter:
        adapter_id = client.params().adapter_id
        versions = [a.version for a in client.approved_artifacts("adapter") if a.id == adapter_id]
        parent = max(versions, default=0)
        return ProposeAdapter(
            creator=address,
            round=round_number,
            adapter_cid=content.cid,
            sha256=content.sha256,
            size=content.size,
            version=parent + 1,
            parent_version=parent,
            submission_ids=tuple(submission),
        )

    doc = _send(node=node, home=home, sender=sender, passphrase=passphrase, build=build)
    stored = _store(home, content) if add else None
    print_json(
        {
            **doc,
            "cid": content.cid,
            "sha256": content.sha256,
            "size": content.size,
            "stored": stored,
        }
    )


@tx_app.command("heartbeat")
def tx_heartbeat(
    sender: FromOpt,
    passphrase: PassOpt,
    endpoint: Annotated[str, typer.Option(help="Serving URL (default: keep the registered).")] = "",
    adapter_version: Annotated[int, typer.Option(min=0, help="Adapter version served.")] = 0,
    capacity: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="Concurrent requests it can take.")
    ] = 0,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Report a serving node alive, with what it serves."""
    from r3mes.chain.msgs import ServingHeartbeat

    def build(client: BlockchainClient, address: str) -> ServingHeartbeat:
        return ServingHeartbeat(
            creator=address, endpoint=endpoint, adapter_version=adapter_version, capacity=capacity
        )

    print_json(_send(node=node, home=home, sender=sender, passphrase=passphrase, build=build))
