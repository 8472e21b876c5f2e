"""The OpenAI-compatible API on a real uvicorn server, driven by the official client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import httpx
import openai
import pytest
import torch
from openai.types.chat import ChatCompletionStreamOptionsParam

from r3mes.model.peft_io import save_peft_adapter
from r3mes.serve.adapters import LoadedAdapter
from r3mes.serve.engine import ServingEngine
from r3mes.serve.router import Route, SemanticRouter
from r3mes.serve.server import ServerThread
from r3mes.serve.settings import ServerSettings

EngineFactory = Callable[..., ServingEngine]
TOKEN = "admin-token-0123456789"
BASE = "tiny-base"
KEYWORDS = ("python", "function", "court", "contract", "hello")


def keyword_embedder(texts: Sequence[str]) -> torch.Tensor:
    """Deterministic stand-in for MiniLM: counts of a few keywords, plus a bias term."""
    rows = [[float(t.lower().count(k)) for k in KEYWORDS] + [0.1] for t in texts]
    return torch.tensor(rows)


@pytest.fixture
def server(engine_factory: EngineFactory) -> Iterator[ServerThread]:
    engine = engine_factory(n_adapters=3, max_loras=4)
    router = SemanticRouter(
        [
            Route(name="code", adapter="ad0", examples=("python function",), threshold=0.5),
            Route(name="law", adapter="ad1", examples=("court contract",), threshold=0.5),
        ],
        keyword_embedder,
    )
    srv = ServerThread(engine, ServerSettings(admin_token=TOKEN), router=router).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=30, max_retries=0)


def chat(client: openai.OpenAI, model: str, text: str, *, max_tokens: int = 20) -> str:
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=max_tokens,
    )
    return out.choices[0].message.content or ""


def test_chat_streamed_equals_non_streamed(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model="ad0", messages=[{"role": "user", "content": "hello"}], max_tokens=20, temperature=0
    )
    assert full.object == "chat.completion" and full.model == "ad0"
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage is not None and full.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="ad0",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_continuous_usage_stats_put_usage_so_far_on_every_chunk(client: openai.OpenAI) -> None:
    """What a billing gateway needs to charge a stream cut short: exact prompt tokens and
    the completion tokens delivered up to each chunk."""
    # continuous_usage_stats is vLLM's extension: openai's StreamOptions TypedDict has no such key.
    options = cast(
        ChatCompletionStreamOptionsParam, {"include_usage": True, "continuous_usage_stats": True}
    )
    stream = client.chat.completions.create(
        model="ad0",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
        stream_options=options,
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert chunks, "content chunks"
    seen = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert len(seen) == len(chunks), "every content chunk carries usage"
    assert seen == sorted(seen) and seen[-1] <= 12
    prompts = {c.usage.prompt_tokens for c in chunks if c.usage is not None}
    assert len(prompts) == 1 and prompts.pop() > 0


def test_text_completions_stream_and_not(client: openai.OpenAI) -> None:
    full = client.completions.create(
        model=BASE, prompt="the quick brown", max_tokens=15, temperature=0
    )
    assert full.object == "text_completion"
    parts = client.completions.create(
        model=BASE, prompt="the quick brown", max_tokens=15, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
    assert full.usage is not None and full.usage.completion_tokens <= 15


def test_sse_wire_format_ends_with_done(server: ServerThread) -> None:
    body = {"model": BASE, "prompt": "hello", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    json.loads(lines[0][len("data: ") :])


def test_models_lists_base_adapters_and_auto(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [BASE, "ad0", "ad1", "ad2", "auto"]


def test_auto_routes_to_the_matching_adapter(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "write a python function please"}],
        max_tokens=5,
    )
    assert out.model == "ad0"
    out = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "what is the weather"}], max_tokens=5
    )
    assert out.model == BASE


def test_auto_reports_the_route_and_score_in_headers(
    server: ServerThread, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "write a python function please"}],
        max_tokens=5,
    )
    assert raw.parse().model == "ad0"
    assert raw.headers["x-r3mes-route"] == "code"
    assert float(raw.headers["x-r3mes-route-score"]) == pytest.approx(1.0, abs=1e-4)
    assert raw.headers["x-r3mes-route-fallback"] == "false"
    body = {"model": "auto", "prompt": "what is the weather", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        headers = r.headers
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    assert float(headers["x-r3mes-route-score"]) < 0.5  # below the threshold: base model
    assert headers["x-r3mes-route-fallback"] == "true"
    plain = client.completions.with_raw_response.create(model="ad1", prompt="hi", max_tokens=2)
    assert "x-r3mes-route" not in plain.headers  # no router, no route headers


def test_unknown_model_is_404_naming_every_model_served(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "no-such-adapter", "hi")
    assert info.value.code == "model_not_found"
    message = info.value.message
    assert "'no-such-adapter' is not served here" in message
    assert f"{BASE} (the base model), ad0, ad1, ad2, auto" in message  # base model first
    assert "loaded adapters: none" not in message


def test_unknown_model_without_adapters_still_names_the_base_model(
    engine_factory: EngineFactory,
) -> None:
    with ServerThread(engine_factory(n_adapters=0), ServerSettings()) as srv:
        body = {"model": "x", "prompt": "hi", "max_tokens": 2}
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=10)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert f"available models: {BASE} (the base model)." in message


def test_requests_beyond_the_queue_get_429_with_retry_after(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch slot, one queue place, a 0.5 s wait limit: a third request is refused at
    once; a queued one is refused when its wait runs out, streamed or not."""
    engine = engine_factory(n_adapters=0, max_batch_size=1, max_waiting=1, max_queue_wait_s=0.5)
    decode = engine._scheduler._decode_step

    def slow_decode() -> None:  # the running stream outlasts the wait limit on any machine
        time.sleep(0.01)
        decode()

    monkeypatch.setattr(engine._scheduler, "_decode_step", slow_decode)
    with ServerThread(engine, ServerSettings()) as srv:
        url = f"{srv.url}/v1/completions"
        long_body = {
            "model": BASE,
            "prompt": "hello",
            "max_tokens": 490,
            "stream": True,
            "ignore_eos": True,
        }
        gate = threading.Event()
        with httpx.stream("POST", url, json=long_body, timeout=60) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # it is decoding
            results: dict[str, httpx.Response] = {}

            def queued(stream: bool) -> None:
                body = {"model": BASE, "prompt": "hi", "max_tokens": 2, "stream": stream}
                results[f"stream={stream}"] = httpx.post(url, json=body, timeout=60)
                gate.set()

            waiter = threading.Thread(target=queued, args=(True,))
            waiter.start()
            deadline = time.monotonic() + 60
            while engine.stats().waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.stats().waiting >= 1, "the first request never queued"
            full = httpx.post(url, json={"model": BASE, "prompt": "x", "max_tokens": 2}, timeout=10)
            assert full.status_code == 429
            assert int(full.headers["retry-after"]) >= 1
            assert full.json()["error"]["type"] == "rate_limit_error"
            assert "queue is full" in full.json()["error"]["message"]
            waiter.join(30)
            assert gate.is_set()
            refused = results["stream=True"]
            assert refused.status_code == 429  # a status, not a stream that breaks later
            assert int(refused.headers["retry-after"]) >= 1
            assert "waited" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": BASE}, "messages"),
        ({"model": BASE, "messages": []}, "messages"),
        ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "temperature": 9}, None),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "logit_bias": {}}, None),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_malformed_chat_requests_get_400_envelopes(
    server: ServerThread, body: dict[str, object], param: str | None
) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_not_json_and_oversized_bodies(server: ServerThread) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and "error" in r.json()
    huge = {"model": BASE, "prompt": "x" * (2 * 1024 * 1024)}
    r = httpx.post(f"{server.url}/v1/completions", json=huge, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    too_long = {"model": BASE, "prompt": "hello world " * 600}
    r = httpx.post(f"{server.url}/v1/completions", json=too_long, timeout=10)
    assert r.status_code == 400 and "at most 511" in r.json()["error"]["message"]


def test_chunked_oversized_body_is_413(server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent with chunked encoding
        yield b'{"model": "tiny-base", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(
        f"{server.url}/v1/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    small = [b'{"model": "tiny-base", ', b'"prompt": "hello", "max_tokens": 2}']
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=iter(small),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text  # a chunked body under the limit still works


MESSAGES = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("completions", {"model": BASE, "prompt": "hello world " * 600}, "prompt", "at most 511"),
        (
            "chat/completions",
            {"model": BASE, "messages": [{"role": "user", "content": "hello world " * 600}]},
            "messages",
            "at most 511",
        ),
        ("completions", b"{not json", None, "request body is not valid JSON"),
        ("chat/completions", b"", None, "empty; send a JSON object with 'model', 'messages'"),
        ("completions", b"", None, "with 'model', 'prompt'"),
        ("completions", [1, 2], None, "must be a JSON object"),
        (
            "chat/completions",
            {"model": BASE, "messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
            "should be a valid string or a valid list",
        ),
        (
            "chat/completions",
            {"model": BASE, "messages": [{"role": "user", "content": "x" * 200_001}]},
            "messages.0.content",
            "at most 200000 characters",
        ),
        (
            "chat/completions",
            {"model": BASE, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content.0.type",
            "should be 'text'",
        ),
        ("chat/completions", {"model": BASE, "messages": MESSAGES, "stop": 5}, "stop", "string"),
        ("completions", {"model": BASE, "prompt": ["a", "b"]}, "prompt", "exactly one prompt"),
    ],
)
def test_error_messages_name_the_field_plainly(
    server: ServerThread, path: str, body: object, param: str | None, says: str
) -> None:
    url = f"{server.url}/v1/{path}"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
    else:
        r = httpx.post(url, json=body, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert says in error["message"]
    for internal in ("constrained-str", "list[", "Value error", "JSON decode error"):
        assert internal not in error["message"]


def test_admin_endpoints_need_the_token(server: ServerThread, tmp_path: Path) -> None:
    url = f"{server.url}/v1/unload_lora_adapter"
    r = httpx.post(url, json={"lora_name": "ad2"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    bad = {"authorization": "Bearer wrong-token-wrong-token"}
    assert httpx.post(url, json={"lora_name": "ad2"}, headers=bad, timeout=10).status_code == 401
    good = {"authorization": f"Bearer {TOKEN}"}
    r = httpx.post(url, json={"lora_name": "ad2"}, headers=good, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "unloaded"
    r = httpx.post(url, json={"lora_name": "ad2"}, headers=good, timeout=10)
    assert r.status_code == 404
    load = f"{server.url}/v1/load_lora_adapter"
    r = httpx.post(
        load, json={"lora_name": "x", "lora_path": str(tmp_path / "none")}, headers=good, timeout=10
    )
    assert r.status_code == 400 and "not a directory" in r.json()["error"]["message"]


def test_admin_disabled_without_token(engine_factory: EngineFactory) -> None:
    with ServerThread(engine_factory(n_adapters=1), ServerSettings()) as srv:
        r = httpx.post(
            f"{srv.url}/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": "/tmp"},
            headers={"authorization": "Bearer anything-at-all-here"},
            timeout=10,
        )
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_loading_an_adapter_while_requests_stream(
    server: ServerThread,
    client: openai.OpenAI,
    adapter_factory: Callable[[int], LoadedAdapter],
    tmp_path: Path,
) -> None:
    prompts = {"ad0": "hello", "ad1": "the court", BASE: "def add"}
    reference = {m: chat(client, m, p, max_tokens=40) for m, p in prompts.items()}
    results: dict[str, str] = {}

    def stream(model: str) -> None:
        parts = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompts[model]}],
            max_tokens=40,
            temperature=0,
            stream=True,
        )
        results[model] = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

    threads = [threading.Thread(target=stream, args=(m,)) for m in prompts]
    for t in threads:
        t.start()
    new = adapter_factory(77)
    save_peft_adapter(tmp_path / "new", new.state, new.config, BASE)
    r = httpx.post(
        f"{server.url}/v1/load_lora_adapter",
        json={"lora_name": "fresh", "lora_path": str(tmp_path / "new")},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert chat(client, "fresh", "hello")  # the new adapter serves right away
    for t in threads:
        t.join(60)
    assert results == reference


def test_client_disconnect_cancels_the_request(server: ServerThread) -> None:
    # ignore_eos: on a loaded box the tiny model can sample its EOS (a "stop") before the
    # server notices the client has gone; this request can only end by running out or by the
    # cancel
    body = {"model": "ad1", "prompt": "hello", "max_tokens": 400, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break
    deadline = time.monotonic() + 60
    while server.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.engine.stats().running == 0
    assert server.engine.stats().tokens_generated < 400
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'r3mes_serve_requests_total{finish_reason="cancelled"} 1.0' in metrics


def test_health_and_metrics(server: ServerThread, client: openai.OpenAI) -> None:
    chat(client, "ad0", "hello")
    chat(client, "ad0", "hello")
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == BASE and health["adapters"] == 3
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "r3mes_serve_time_to_first_token_seconds_count 2.0" in text
    assert "r3mes_serve_queue_depth 0.0" in text
    assert "r3mes_serve_adapter_cache_hits_total" in text
    assert 'r3mes_serve_requests_total{finish_reason="length"} 2.0' in text
    assert "cancelled" not in text  # a finished request is not also counted as abandoned


def test_engine_failures_reach_the_client_as_errors(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(server.engine._scheduler, "_decode_step", broken)
    body = {"model": "ad0", "prompt": "hello", "max_tokens": 8}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "simulated" not in r.json()["error"]["message"]  # internals stay in the log
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=30
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["error"]["type"] == "server_error"
