"""Adapters from the artifact registry: `ID[@VERSION]` resolved through `UnifiedRegistry`.

A registry adapter is an approved record (synced into `$R3MES_HOME/cache`) whose PEFT folder
is installed under `$R3MES_HOME/adapters/<id>/<version>/`. Loading one installs it first if
needed (from the home's blockstore or another configured source, SHA-256 checked), re-hashes
the installed files against their manifest, then registers the folder with the engine like
any PEFT directory. Without a version the latest approved one is taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r3mes.serve.adapters import AdapterEntry, check_adapter_name, peft_dir_loader
from r3mes.serve.errors import AdapterLoadError, InvalidRequest

if TYPE_CHECKING:
    from r3mes.paths import Home
    from r3mes.registry.unified import UnifiedRegistry
    from r3mes.serve.engine import ServingEngine

REGISTRY_SCHEME = "registry:"
_PART = r"[A-Za-z0-9._-]{1,128}"
_REF = re.compile(rf"^(?P<id>{_PART})(?:@(?P<version>[0-9]{{1,18}}))?$")


@dataclass(frozen=True)
class RegistryRef:
    """An adapter in the registry: its id and, optionally, one version."""

    artifact_id: str
    version: int | None = None
    """None: the latest approved version."""

    @classmethod
    def parse(cls, text: str, *, param: str = "lora_id") -> RegistryRef:
        """Parse `ID` or `ID@VERSION` (a leading `registry:` is allowed)."""
        match = _REF.match(text.removeprefix(REGISTRY_SCHEME))
        if match is None or ".." in text:
            raise InvalidRequest(
                f"{text!r} is not a registry adapter reference; use ID or ID@VERSION "
                "(ID: letters, digits, '.', '_', '-'; VERSION: a number)",
                param=param,
            )
        version = match["version"]
        return cls(artifact_id=match["id"], version=None if version is None else int(version))

    def __str__(self) -> str:
        if self.version is None:
            return self.artifact_id
        return f"{self.artifact_id}@{self.version}"


def home_registry(home: Home) -> UnifiedRegistry:
    """The registry of an R3MES home, read-only towards the ledger (records from its last
    `r3mes registry sync`); missing files come from the home's blockstore."""
    from r3mes.registry.download import DownloadManager, default_fetchers
    from r3mes.registry.unified import UnifiedRegistry
    from r3mes.storage.blockstore import Blockstore

    blocks = Blockstore(home.blocks)
    fetchers = default_fetchers(blockstore=blocks, use_hugging_face=False)
    return UnifiedRegistry(home=home, downloader=DownloadManager(fetchers, cache=blocks))


def load_registry_adapter(
    engine: ServingEngine, *, name: str, registry: UnifiedRegistry, ref: RegistryRef
) -> AdapterEntry:
    """Install (if needed), verify and serve registry adapter `ref` under `name`.

    Blocks on disk (and maybe network) I/O: call it off the event loop.
    """
    from r3mes.registry.errors import InvalidArtifactRecord, RegistryError
    from r3mes.storage.errors import StorageError

    check_adapter_name(name)  # before any download
    try:
        record = registry.adapters.get(ref.artifact_id, ref.version)
        folder = registry.adapters.install(record)
        intact = registry.local.verify(record)
    except (RegistryError, InvalidArtifactRecord, StorageError) as exc:
        raise AdapterLoadError(name, str(exc), param="lora_id") from exc
    if not intact:
        raise AdapterLoadError(
            name,
            f"the installed files of {record.ref} do not match their manifest; "
            f"reinstall with `r3mes registry pull {record.id} --force`",
            param="lora_id",
        )
    origin = f"{REGISTRY_SCHEME}{record.id}@{record.version}"
    return engine.load_adapter_from(name, peft_dir_loader(folder), origin=origin)
