"""`r3mes serving start | route | route-eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from support.net import free_port
from typer.testing import CliRunner

from r3mes.cli.serving import _parse_adapters, app
from r3mes.model.checkpoint import save_pretrained
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.peft_io import save_peft_adapter
from r3mes.model.tiny import make_tiny_model
from r3mes.model.tokenizer import Tokenizer
from r3mes.serve.adapters import LoadedAdapter
from r3mes.serve.errors import InvalidRequest
from r3mes.serve.router import ROUTE_OFF, load_routes


def test_adapter_specs_are_checked() -> None:
    assert _parse_adapters(["a=/x", "b=y/z"]) == {"a": Path("/x"), "b": Path("y/z")}
    with pytest.raises(InvalidRequest, match="NAME=PATH"):
        _parse_adapters(["nopath"])
    with pytest.raises(InvalidRequest, match="twice"):
        _parse_adapters(["a=/x", "a=/y"])


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in ("start", "route", "route-eval"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.slow
def test_route_eval_prints_accuracy_and_writes_calibrated_routes(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "default_threshold": 0.0,
                "routes": [
                    {"name": "code", "examples": ["write a python function", "debug my code"]},
                    {"name": "law", "examples": ["is this contract legal", "court ruling"]},
                    {"name": "baking", "examples": ["bake a loaf of bread", "cake recipe"]},
                ],
            }
        )
    )
    labelled = tmp_path / "set.jsonl"
    rows = [
        ("sort a list in python", "code"),
        ("my program throws an exception", "code"),
        ("can my landlord evict me", "law"),
        ("sign a lease agreement", "law"),
        ("banana bread recipe", None),
        ("what a sunny day", None),
    ]
    labelled.write_text("".join(json.dumps({"text": t, "route": r}) + "\n" for t, r in rows))
    out = tmp_path / "tuned.json"
    result = CliRunner().invoke(
        app,
        ["route-eval", "--routes", str(routes), "--labelled", str(labelled), "--write", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy on 6 prompts" in result.output
    tuned = json.loads(out.read_text())
    thresholds = {r["name"]: r["threshold"] for r in tuned["routes"]}
    assert all(t > 0.0 for t in thresholds.values())  # raised above the file's 0.0
    assert thresholds["baking"] == ROUTE_OFF  # no prompt belongs to it: switched off
    assert thresholds["code"] <= 1.0 and thresholds["law"] <= 1.0
    assert [r.name for r in load_routes(out)] == ["code", "law", "baking"]
    assert "off" in result.output


@pytest.mark.slow
def test_start_serves_a_model_directory_with_an_adapter(
    tmp_path: Path,
    tokenizer: Tokenizer,
    adapter_factory: Callable[[int], LoadedAdapter],
) -> None:
    model: BitNetForCausalLM = make_tiny_model(0, vocab_size=tokenizer.vocab_size)
    model.freeze_backbone()
    save_pretrained(model, tmp_path / "base", packed=True)
    tokenizer.save(tmp_path / "base")
    adapter = adapter_factory(5)
    save_peft_adapter(tmp_path / "ad", adapter.state, adapter.config, "base")
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[routes]]\nname = "mine"\nthreshold = 0.5\nexamples = ["fix my python code"]\n'
    )
    port = free_port()
    env = {**os.environ, "R3MES_ADMIN_TOKEN": "x" * 20}
    cmd = [sys.executable, "-m", "r3mes.cli.main", "serving", "start", "--model"]
    cmd += [str(tmp_path / "base"), "--adapter", f"mine={tmp_path / 'ad'}", "--port", str(port)]
    cmd += ["--routes", str(routes)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=30)
        assert [m.id for m in client.models.list()] == ["base", "mine", "auto"]
        out = client.completions.create(model="mine", prompt="hello", max_tokens=8, temperature=0)
        assert out.usage is not None and out.usage.completion_tokens > 0
        routed = client.completions.create(
            model="auto", prompt="my python code has a bug", max_tokens=4
        )
        assert routed.model == "mine"
        unrouted = client.completions.create(model="auto", prompt="lovely weather", max_tokens=4)
        assert unrouted.model == "base"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.slow
def test_route_shows_the_decision(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [{"name": "code", "examples": ["debug my code"]}]}))
    result = CliRunner().invoke(app, ["route", "my program crashes", "--routes", str(routes)])
    assert result.exit_code == 0, result.output
    assert "-> code" in result.output
