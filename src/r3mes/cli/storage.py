"""`r3mes storage | registry`: content-addressed blocks and approved artifacts."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from r3mes.registry.records import ArtifactSource

storage_app = typer.Typer(help="Content-addressed storage: cid, add, get, pin, gc.")
registry_app = typer.Typer(help="Approved models, datasets and adapters: sync, list, pull, verify.")

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="R3MES home folder (default $R3MES_HOME or ~/.r3mes).")
]
IpfsOpt = Annotated[
    str | None,
    typer.Option(
        "--ipfs-url", envvar="R3MES_IPFS_URL", help="Kubo RPC API, e.g. http://127.0.0.1:5001."
    ),
]
GatewayOpt = Annotated[
    str | None,
    typer.Option("--gateway", envvar="R3MES_IPFS_GATEWAY", help="HTTP gateway for reads."),
]
ChainOpt = Annotated[
    str,
    typer.Option("--chain", envvar=["R3MES_CHAIN_URL", "R3MES_CHAIN_RPC"], help="Ledger RPC URL."),
]
VersionOpt = Annotated[
    int, typer.Option("--cid-version", min=0, max=1, help="0: Qm..., 1: bafy...")
]


def _blockstore(home: Path | None) -> Any:
    from r3mes.paths import Home
    from r3mes.storage.blockstore import Blockstore

    return Blockstore(Home.from_env(home, environ=os.environ).blocks)


@storage_app.command("cid")
def cid_cmd(file: Path, cid_version: VersionOpt = 1) -> None:
    """Print the CID `ipfs add [--cid-version=1]` would give FILE, without storing it."""
    from r3mes.storage.errors import StorageError
    from r3mes.storage.unixfs import DagParams, build_dag, root_of

    if not file.is_file():
        raise StorageError(f"{file} is not a file; pass the path of a file")

    def pieces() -> Any:
        with file.open("rb") as handle:
            while piece := handle.read(1 << 20):
                yield piece

    Console().print(str(root_of(build_dag(pieces(), DagParams(cid_version=cid_version)))))


@storage_app.command("add")
def add_cmd(
    file: Path,
    cid_version: VersionOpt = 1,
    no_pin: Annotated[
        bool, typer.Option("--no-pin", help="Do not pin (GC may remove it).")
    ] = False,
    home: HomeOpt = None,
    ipfs_url: IpfsOpt = None,
) -> None:
    """Add FILE to the local blockstore (or to Kubo when --ipfs-url / R3MES_IPFS_URL is set)."""
    from r3mes.storage.kubo import KuboClient

    if ipfs_url:
        with KuboClient(ipfs_url) as client:
            cid = client.add_file(file, cid_version=cid_version, pin=not no_pin)
    else:
        cid = _blockstore(home).add_file(file, cid_version=cid_version, pin=not no_pin)
    Console().print(cid)


@storage_app.command("get")
def get_cmd(
    cid: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Destination file.")] = None,
    max_size: Annotated[int, typer.Option(help="Refuse content larger than this.")] = 8 << 30,
    home: HomeOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
) -> None:
    """Write the verified content of CID to a file (default ./CID): from the local blockstore,
    else (missing or damaged there) from IPFS, which also repairs a damaged local copy."""
    from r3mes.storage.errors import BlockNotFound, CidMismatch, MalformedBlock, StorageError
    from r3mes.storage.kubo import KuboClient
    from r3mes.storage.multiformats import parse_cid
    from r3mes.storage.tempfiles import remove_stale

    dest = output or Path(cid)
    remove_stale(dest.parent)  # temp files of earlier `get`s that were killed
    store = _blockstore(home)
    try:
        size = store.cat_to_file(cid, dest, max_size=max_size)
    except (BlockNotFound, CidMismatch, MalformedBlock) as local_error:
        if not (ipfs_url or gateway):
            raise
        if ipfs_url:
            client = KuboClient(ipfs_url, gateway_url=gateway)
        else:
            client = KuboClient.gateway(str(gateway))
        with client:
            size = client.cat_to_file(cid, dest, max_size=max_size)
        if not isinstance(local_error, BlockNotFound):
            try:  # the remote bytes are verified: rewrite the damaged blocks with them
                store.add_file(dest, cid_version=parse_cid(cid).version, pin=False)
            except StorageError as exc:
                Console(stderr=True).print(f"[yellow]could not repair the local copy:[/] {exc}")
    Console().print(f"wrote {size} bytes to {dest}")


@storage_app.command("pin")
def pin_cmd(
    cid: Annotated[str | None, typer.Argument(help="CID to pin (omit with --list).")] = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the pin instead.")] = False,
    list_pins: Annotated[bool, typer.Option("--list", help="List pinned CIDs.")] = False,
    home: HomeOpt = None,
) -> None:
    """Pin (recursively) or unpin a CID in the local blockstore, or list pins."""
    from r3mes.storage.errors import StorageError

    store = _blockstore(home)
    console = Console()
    if list_pins:
        for pinned in store.pins():
            console.print(pinned)
        return
    if cid is None:
        raise StorageError("give a CID to pin, or --list")
    if remove:
        store.unpin(cid)
        console.print(f"unpinned {cid}")
    else:
        store.pin(cid)
        console.print(f"pinned {cid}")


@storage_app.command("gc")
def gc_cmd(home: HomeOpt = None) -> None:
    """Delete blocks that no pin reaches."""
    result = _blockstore(home).gc()
    Console().print(
        f"removed {result.removed} blocks ({result.freed_bytes} bytes), kept {result.kept}"
    )


def _registry(
    home: Path | None, source: ArtifactSource | None, ipfs_url: str | None, gateway: str | None
) -> Any:
    from r3mes.paths import Home
    from r3mes.registry.download import DownloadManager, default_fetchers
    from r3mes.registry.unified import UnifiedRegistry
    from r3mes.storage.blockstore import Blockstore

    resolved = Home.from_env(home, environ=os.environ)
    fetchers = default_fetchers(
        blockstore=Blockstore(resolved.blocks), ipfs_url=ipfs_url, gateway_url=gateway
    )
    manager = DownloadManager(fetchers, progress=True, cache=Blockstore(resolved.blocks))
    return UnifiedRegistry(home=resolved, downloader=manager, source=source)


@registry_app.command("sync")
def sync_cmd(chain: ChainOpt = "http://127.0.0.1:26657", home: HomeOpt = None) -> None:
    """Fetch the approved models, datasets and adapters from the ledger."""
    from r3mes.chain.client import BlockchainClient

    with BlockchainClient(chain) as client:
        results = _registry(home, client, None, None).sync_all()
    console = Console()
    for kind, result in results.items():
        console.print(f"{kind}: {len(result.records)} approved, {len(result.rejected)} rejected")
        for reason in result.rejected:
            console.print(f"  [yellow]rejected[/] {reason}")


class Kind(StrEnum):
    """Artifact kinds, as `--kind` accepts them."""

    model = "model"
    dataset = "dataset"
    adapter = "adapter"


@registry_app.command("list")
def list_cmd(
    kind: Annotated[Kind | None, typer.Option(help="Only this kind.")] = None,
    home: HomeOpt = None,
) -> None:
    """List approved artifacts from the last sync and whether each is installed."""
    registry = _registry(home, None, None, None)
    table = Table("kind", "id", "version", "size", "cid", "installed")
    for record in registry.all_records():
        if kind is not None and record.kind != kind.value:
            continue
        ready = "yes" if registry.local.is_installed(record) else "no"
        table.add_row(
            record.kind, record.id, str(record.version), str(record.size), record.cid, ready
        )
    Console().print(table)


@registry_app.command("pull")
def pull_cmd(
    artifact_id: str,
    version: Annotated[int | None, typer.Option(help="Version (default: latest approved).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if installed.")] = False,
    home: HomeOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
) -> None:
    """Download, verify and install an approved artifact."""
    registry = _registry(home, None, ipfs_url, gateway)
    record = registry.find(artifact_id, version)
    path = registry.registry_for(record.kind).pull(record.id, record.version, force=force)
    Console().print(f"{record.ref} ready at {path}")


@registry_app.command("verify")
def verify_cmd(
    artifact_id: Annotated[str | None, typer.Argument(help="Only this id.")] = None,
    home: HomeOpt = None,
) -> None:
    """Re-hash installed artifacts against their approved checksums."""
    from r3mes.registry.errors import RegistryError

    registry = _registry(home, None, None, None)
    console = Console()
    bad = 0
    for record in registry.all_records():
        if artifact_id and record.id != artifact_id:
            continue
        if not registry.local.manifest(record):
            continue
        ok = registry.local.verify(record)
        bad += not ok
        console.print(f"{record.ref}: {'[green]ok[/]' if ok else '[red]CORRUPT[/]'}")
    if bad:
        raise RegistryError(f"{bad} artifact(s) failed verification; `r3mes registry pull --force`")
