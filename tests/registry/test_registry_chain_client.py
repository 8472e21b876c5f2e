"""sync_from_chain through the real `BlockchainClient` (HTTP answered by a mock transport)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from r3mes.chain.client import BlockchainClient
from r3mes.chain.client_types import PREFIX
from r3mes.chain.errors import ClientError
from r3mes.paths import Home
from r3mes.registry.download import DownloadManager
from r3mes.registry.unified import UnifiedRegistry
from r3mes.storage.unixfs import compute_cid

DATA = b"tiny model bundle"


def _artifact(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": "bitnet-tiny",
        "kind": "model",
        "version": 2,
        "cid": compute_cid(DATA),
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "size": len(DATA),
        "base_model_id": "",
        "base_model_version": 0,
        "target_modules": [],
        "rank": 0,
        "hf_repo": "",
        "hf_revision": "",
        "approved_height": 7,
        "status": "approved",
    }
    doc.update(over)
    return doc


def test_sync_from_chain_with_blockchain_client(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.url.path == f"{PREFIX}/artifacts"
        kind = request.url.params.get("kind")
        docs = [_artifact()] if kind in (None, "model") else []
        if kind == "adapter":
            # ledger-legal (any alphanumeric CID), but no node can install it
            bad = {"base_model_id": "bitnet-tiny", "base_model_version": 2, "rank": 4}
            docs = [_artifact(id="bad", kind="adapter", cid="garbage", **bad)]
        return httpx.Response(200, content=json.dumps({"artifacts": docs}))

    client = BlockchainClient("http://ledger.test", transport=httpx.MockTransport(handler))
    registry = UnifiedRegistry(home=Home(tmp_path), downloader=DownloadManager([]), source=client)
    results = registry.sync_all()
    model = results["model"].records[0]
    assert (model.id, model.version, model.base_model_id) == ("bitnet-tiny", 2, None)
    assert results["adapter"].records == () and "bad" in results["adapter"].rejected[0]
    assert "cid" in results["adapter"].rejected[0]
    assert registry.models.get("bitnet-tiny").approved_height == 7
    assert any("status=approved" in url for url in seen)


def test_an_entry_the_ledger_could_not_hold_is_a_malformed_answer() -> None:
    """An adapter without its base model breaks the ledger's own rules: the client says the
    node answered something malformed instead of handing it on."""

    def handler(request: httpx.Request) -> httpx.Response:
        docs = [_artifact(id="orphan", kind="adapter")]
        return httpx.Response(200, content=json.dumps({"artifacts": docs}))

    client = BlockchainClient("http://ledger.test", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError, match="malformed artifact.*base_model_id"):
        client.approved_artifacts("adapter")
