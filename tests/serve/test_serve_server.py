"""`build_engine` with the shipped model, and `ServerThread` lifecycle."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from r3mes.model.errors import ModelError
from r3mes.model.lora import LoraConfig
from r3mes.model.peft_io import save_peft_adapter
from r3mes.model.shipped import SHIPPED_MODEL_NAME
from r3mes.serve.chat_template import ChatMessage, render_chat
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.errors import AdapterLoadError, InvalidRequest
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.server import ServerThread, build_engine
from r3mes.serve.settings import ServerSettings
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, TokenEvent


def test_chat_template_shape() -> None:
    text = render_chat([ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    with pytest.raises(InvalidRequest):
        render_chat([])
    with pytest.raises(InvalidRequest):
        ChatMessage("robot", "x")


def test_settings_refuse_weak_admin_tokens() -> None:
    with pytest.raises(InvalidRequest, match="16 characters"):
        ServerSettings(admin_token="short")
    assert "secret-secret-secret" not in repr(ServerSettings(admin_token="secret-secret-secret"))


def _submit_and_wait(engine: ServingEngine, request: GenerationRequest) -> list[EngineEvent]:
    """Every event of one request, once it finished (within 60 s)."""
    done = threading.Event()
    events: list[EngineEvent] = []

    def sink(event: EngineEvent) -> None:
        events.append(event)
        if isinstance(event, FinishEvent):
            done.set()

    engine.submit(request, sink)
    assert done.wait(60)
    return events


def test_shipped_model_serves_a_chat_with_a_peft_adapter(tmp_path: Path) -> None:
    import torch

    from r3mes.model.shipped import load_shipped_model

    probe, _ = load_shipped_model()
    config = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    from r3mes.model.lora import apply_lora, lora_state_dict

    apply_lora(probe, config, name="p")
    state = {k: torch.randn(v.shape) * 0.01 for k, v in lora_state_dict(probe, "p").items()}
    save_peft_adapter(tmp_path / "ad", state, config, SHIPPED_MODEL_NAME)

    engine = build_engine(
        None, adapters={"helper": tmp_path / "ad"}, config=EngineConfig(max_batch_size=2)
    )
    assert engine.model_name == SHIPPED_MODEL_NAME
    assert engine.adapters.names() == ["helper"]
    with pytest.raises(AdapterLoadError):
        engine.load_adapter("missing", tmp_path / "nope")
    prompt = render_chat([ChatMessage("user", "Hello, who are you?")])
    with ServerThread(engine, ServerSettings()) as server:
        params = SamplingParams(max_tokens=12)
        request = GenerationRequest(engine.encode_prompt(prompt), "helper", params)
        events = _submit_and_wait(engine, request)
        assert httpx.get(f"{server.url}/health", timeout=10).json()["model"] == SHIPPED_MODEL_NAME
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.reason in ("stop", "length")
    shown = sum(isinstance(e, TokenEvent) for e in events)
    assert finish.completion_tokens - 1 <= shown <= finish.completion_tokens  # EOS not shown
    assert not engine.alive  # stopping the server stops the engine


def test_engine_serves_with_a_bfloat16_embedding() -> None:
    import torch

    engine = build_engine(None, config=EngineConfig(max_batch_size=2), embedding_dtype="bfloat16")
    weight = engine.model.model.embed_tokens.weight
    assert weight.dtype == torch.bfloat16 and engine.model.lm_head.weight is weight
    with engine:
        prompt = engine.encode_prompt(render_chat([ChatMessage("user", "Hello")]))
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        events = _submit_and_wait(engine, GenerationRequest(prompt, None, params))
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "length"
    assert finish.completion_tokens == 6
    with pytest.raises(ModelError, match="not one of"):
        build_engine(None, embedding_dtype="float16")
