"""Adapters from the artifact registry: a real R3MES home (synced records, blockstore,
installed folders), loaded at start (`--adapter NAME=registry:ID[@VERSION]`) and through
/v1/load_lora_adapter with `lora_id`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support.net import free_port

from r3mes.cli.serving import _parse_adapters
from r3mes.model.checkpoint import save_pretrained
from r3mes.model.peft_io import save_peft_adapter
from r3mes.model.tiny import make_tiny_model
from r3mes.model.tokenizer import Tokenizer
from r3mes.paths import Home
from r3mes.registry.bundle import pack_dir
from r3mes.registry.download import BlockstoreFetcher, DownloadManager
from r3mes.registry.unified import UnifiedRegistry
from r3mes.serve.adapters import LoadedAdapter
from r3mes.serve.engine import ServingEngine
from r3mes.serve.errors import AdapterLoadError, InvalidRequest
from r3mes.serve.registry_adapters import RegistryRef, home_registry, load_registry_adapter
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.server import ServerThread
from r3mes.serve.settings import ServerSettings
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, TokenEvent
from r3mes.storage.blockstore import Blockstore

EngineFactory = Callable[..., ServingEngine]
TOKEN = "admin-token-0123456789"
SEEDS = {1: 301, 2: 302}  # adapter "coder": version -> weights seed


class Ledger:
    """The approved list `r3mes registry sync` would read from the chain."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def approved_artifacts(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.entries if kind is None or e["kind"] == kind]


def _publish(store: Blockstore, folder: Path, **fields: Any) -> dict[str, Any]:
    """Bundle `folder` into the blockstore; the approved record for it."""
    data = pack_dir(folder)
    return {
        "cid": store.add_bytes(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **fields,
    }


@pytest.fixture
def home(
    tmp_path: Path, tokenizer: Tokenizer, adapter_factory: Callable[[int], LoadedAdapter]
) -> Home:
    """A home with the tiny base model and adapter `coder` v1, v2 approved and in its blockstore
    (synced, nothing installed yet)."""
    home = Home(root=tmp_path / "home")
    store = Blockstore(home.blocks)
    base = tmp_path / "src" / "base"
    model = make_tiny_model(0, vocab_size=tokenizer.vocab_size)
    model.freeze_backbone()
    save_pretrained(model, base, packed=True)
    tokenizer.save(base)
    entries = [_publish(store, base, id="tiny-base", kind="model", version=1)]
    for version, seed in SEEDS.items():
        adapter = adapter_factory(seed)
        folder = save_peft_adapter(
            tmp_path / "src" / f"coder{version}", adapter.state, adapter.config, "tiny-base"
        )
        entries.append(
            _publish(
                store,
                folder,
                id="coder",
                kind="adapter",
                version=version,
                base_model_id="tiny-base",
                base_model_version=1,
                target_modules=list(adapter.config.target_modules),
                rank=adapter.config.r,
                approved_height=version,
            )
        )
    manager = DownloadManager([BlockstoreFetcher(store)])
    UnifiedRegistry(home=home, downloader=manager, source=Ledger(entries)).sync_all()
    return home


def test_registry_references_parse() -> None:
    assert RegistryRef.parse("coder") == RegistryRef("coder", None)
    assert RegistryRef.parse("registry:coder@2") == RegistryRef("coder", 2)
    for bad in ("", "a@", "@1", "a b", "../x", "a@1@2", "a@1.0.0", "a@v2"):
        with pytest.raises(InvalidRequest, match="ID@VERSION"):
            RegistryRef.parse(bad)
    specs = _parse_adapters(["c=registry:coder@1", "d=/some/dir"])
    assert specs == {"c": RegistryRef("coder", 1), "d": Path("/some/dir")}
    with pytest.raises(InvalidRequest, match="ID@VERSION"):
        _parse_adapters(["c=registry:"])


def test_engine_serves_a_registry_adapter_like_its_folder(
    home: Home, engine_factory: EngineFactory, adapter_factory: Callable[[int], LoadedAdapter]
) -> None:
    engine = engine_factory(n_adapters=0)
    registry = home_registry(home)
    entry = load_registry_adapter(
        engine, name="coder", registry=registry, ref=RegistryRef("coder", 1)
    )
    assert entry.origin == "registry:coder@1"
    installed = home.adapters / "coder" / "1"
    assert (installed / "adapter_model.safetensors").is_file()  # installed on demand
    latest = load_registry_adapter(
        engine, name="latest", registry=registry, ref=RegistryRef("coder")
    )
    assert latest.origin == "registry:coder@2"
    v1 = adapter_factory(SEEDS[1])
    engine.load_adapter_from("direct", lambda: v1)
    assert _greedy(engine, "coder") == _greedy(engine, "direct") != _greedy(engine, "latest")


def test_registry_failures_are_load_errors(home: Home, engine_factory: EngineFactory) -> None:
    engine = engine_factory(n_adapters=0)
    registry = home_registry(home)
    with pytest.raises(AdapterLoadError, match="no approved adapter 'coder@9'") as info:
        load_registry_adapter(engine, name="x", registry=registry, ref=RegistryRef("coder", 9))
    assert info.value.param == "lora_id"
    load_registry_adapter(engine, name="x", registry=registry, ref=RegistryRef("coder", 1))
    weights = home.adapters / "coder" / "1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # tampered after install
    with pytest.raises(AdapterLoadError, match="do not match their manifest"):
        load_registry_adapter(engine, name="y", registry=registry, ref=RegistryRef("coder", 1))
    assert engine.adapters.names() == ["x"]


@pytest.fixture
def server(home: Home, engine_factory: EngineFactory) -> Iterator[ServerThread]:
    engine = engine_factory(n_adapters=0)
    settings = ServerSettings(admin_token=TOKEN)
    srv = ServerThread(engine, settings, registry=home_registry(home)).start()
    yield srv
    srv.stop()


def test_load_lora_adapter_by_registry_id(server: ServerThread) -> None:
    url = f"{server.url}/v1/load_lora_adapter"
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = httpx.post(url, json={"lora_name": "coder", "lora_id": "coder@2"}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["origin"] == "registry:coder@2"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", timeout=30, max_retries=0)
    out = client.completions.create(model="coder", prompt="hello", max_tokens=4, temperature=0)
    assert out.usage is not None and out.usage.completion_tokens > 0
    bad = [
        ({"lora_name": "a", "lora_id": "nope"}, "lora_id", "no approved adapter"),
        ({"lora_name": "a", "lora_id": "bad id"}, "lora_id", "ID@VERSION"),
        ({"lora_name": "a", "lora_id": "coder", "lora_path": "/x"}, None, "exactly one"),
        ({"lora_name": "a"}, None, "exactly one"),
    ]
    for body, param, says in bad:
        r = httpx.post(url, json=body, headers=auth, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"]


def test_lora_id_without_a_registry_is_refused(engine_factory: EngineFactory) -> None:
    with ServerThread(engine_factory(n_adapters=0), ServerSettings(admin_token=TOKEN)) as srv:
        r = httpx.post(
            f"{srv.url}/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_id": "coder"},
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
    assert r.status_code == 400 and r.json()["error"]["code"] == "registry_disabled"


@pytest.mark.slow
def test_start_serves_a_registry_adapter(home: Home, tmp_path: Path) -> None:
    registry = home_registry(home)
    model_dir = registry.models.pull("tiny-base")  # the base model from the registry too
    port = free_port()
    cmd = [sys.executable, "-m", "r3mes.cli.main", "serving", "start", "--model", str(model_dir)]
    cmd += ["--registry-home", str(home.root), "--adapter", "mine=registry:coder@1"]
    cmd += ["--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "R3MES_HOME"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=30)
        assert "mine" in [m.id for m in client.models.list()]
        out = client.completions.create(model="mine", prompt="hello", max_tokens=4)
        assert out.model == "mine" and out.usage is not None and out.usage.completion_tokens > 0
    finally:
        proc.terminate()
        proc.wait(20)
    bad = subprocess.run(
        [*cmd[:-2], "--port", str(free_port()), "--adapter", "x=registry:nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "no approved adapter 'nope'" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def _greedy(engine: ServingEngine, adapter: str) -> list[int]:
    tokens: list[int] = []
    done = threading.Event()

    def sink(event: EngineEvent) -> None:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        elif isinstance(event, FinishEvent):
            done.set()

    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = engine.encode_prompt("hello world")
    engine.submit(GenerationRequest(prompt_ids=prompt, adapter=adapter, params=params), sink)
    assert done.wait(30)
    return tokens


def _wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.3)
