"""`r3mes serving ...`: the multi-LoRA inference server and its semantic router."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from r3mes.cli.model import EmbeddingDtype, EmbeddingDtypeOpt

if TYPE_CHECKING:
    from r3mes.serve.registry_adapters import RegistryRef

app = typer.Typer(help="Multi-LoRA serving with an OpenAI-compatible API.", no_args_is_help=True)


RoutesOpt = Annotated[
    Path, typer.Option("--routes", help="Route file (JSON or TOML) with example utterances.")
]


def _parse_adapters(specs: list[str]) -> dict[str, Path | RegistryRef]:
    """NAME=PATH (a PEFT directory) or NAME=registry:ID[@VERSION] (the artifact registry)."""
    from r3mes.serve.errors import InvalidRequest
    from r3mes.serve.registry_adapters import REGISTRY_SCHEME, RegistryRef

    adapters: dict[str, Path | RegistryRef] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise InvalidRequest(
                f"--adapter {spec!r}: use NAME=PATH (a PEFT adapter directory) "
                "or NAME=registry:ID[@VERSION]"
            )
        if name in adapters:
            raise InvalidRequest(f"--adapter {name!r} given twice")
        if source.startswith(REGISTRY_SCHEME):
            adapters[name] = RegistryRef.parse(source, param="--adapter")
        else:
            adapters[name] = Path(source)
    return adapters


def _threshold(value: float) -> str:
    """A route threshold for display; one above 1 routes nothing (the route is off)."""
    return "off" if value > 1.0 else f"{value:.3f}"


@app.command("start")
def start(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Base model directory (checkpoint + tokenizer.json); "
            "default: the shipped r3mes-bitnet-mini.",
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            help="NAME=PATH of a PEFT adapter directory, or NAME=registry:ID[@VERSION] of an "
            "approved adapter in the registry (installed on demand); repeatable.",
        ),
    ] = None,
    registry_home: Annotated[
        Path | None,
        typer.Option(
            "--registry-home",
            envvar="R3MES_HOME",
            help="R3MES home whose artifact registry serves registry: adapters "
            "(default: $R3MES_HOME or ~/.r3mes; sync it with `r3mes registry sync`).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="R3MES_ADMIN_TOKEN",
            help="Bearer token for /v1/load_lora_adapter and /v1/unload_lora_adapter "
            "(admin API disabled without it).",
            show_default=False,
        ),
    ] = None,
    routes: Annotated[
        Path | None,
        typer.Option("--routes", help="Route file enabling model='auto' (semantic router)."),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Sequences per decode step.")] = 16,
    max_loras: Annotated[int, typer.Option(min=1, help="Distinct adapters per batch.")] = 4,
    max_cpu_loras: Annotated[int, typer.Option(min=1, help="Adapters kept in host memory.")] = 16,
    max_lora_rank: Annotated[int, typer.Option(min=1, help="Largest adapter rank served.")] = 64,
    max_model_len: Annotated[
        int | None,
        typer.Option(min=2, help="Prompt plus completion limit (default: the model's context)."),
    ] = None,
    kv_cache_mb: Annotated[
        int,
        typer.Option(
            min=1,
            help="KV-cache memory budget (MiB): requests beyond it queue, then get HTTP 429.",
        ),
    ] = 1024,
    max_waiting: Annotated[
        int, typer.Option(min=1, help="Queued requests at most; more get HTTP 429.")
    ] = 256,
    max_queue_wait: Annotated[
        float,
        typer.Option(min=0.001, help="Seconds a request may wait for a batch slot before 429."),
    ] = 30.0,
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: default).")] = 0,
    embedding_dtype: EmbeddingDtypeOpt = EmbeddingDtype.float32,
) -> None:
    """Serve the base model and adapters over an OpenAI-compatible API until Ctrl-C or
    SIGTERM (a clean shutdown exits 0 either way)."""
    import torch

    from r3mes.paths import Home
    from r3mes.serve.engine import EngineConfig
    from r3mes.serve.registry_adapters import home_registry
    from r3mes.serve.router import SemanticRouter, load_routes, minilm_embedder
    from r3mes.serve.server import build_engine, run_server
    from r3mes.serve.settings import ServerSettings

    if threads:
        torch.set_num_threads(threads)
    console = Console()
    settings = ServerSettings(admin_token=admin_token)  # validates the token before loading
    config = EngineConfig(
        max_batch_size=max_batch_size,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        max_lora_rank=max_lora_rank,
        max_model_len=max_model_len,
        kv_cache_mb=kv_cache_mb,
        max_waiting=max_waiting,
        max_queue_wait_s=max_queue_wait,
    )
    router = SemanticRouter(load_routes(routes), minilm_embedder()) if routes else None
    registry = home_registry(Home.from_env(registry_home, environ=os.environ))
    sources = _parse_adapters(adapter or [])
    engine = build_engine(
        model,
        adapters=sources,
        config=config,
        registry=registry,
        embedding_dtype=embedding_dtype.value,
    )
    names = ", ".join(engine.adapters.names()) or "none"
    console.print(
        f"serving [bold]{engine.model_name}[/] with adapters: {names} "
        f"on http://{host}:{port}/v1 (admin API {'on' if admin_token else 'off'}, "
        f"router {'on' if router else 'off'})"
    )
    stopped_by = run_server(
        engine, settings, host=host, port=port, router=router, registry=registry
    )
    console.print(f"serving stopped ({stopped_by or 'server exited'}); shut down cleanly")


@app.command("route")
def route(
    text: Annotated[str, typer.Argument(help="The prompt to route.")],
    routes: RoutesOpt,
) -> None:
    """Show which adapter the semantic router picks for TEXT, with every route's score."""
    from r3mes.serve.router import SemanticRouter, load_routes, minilm_embedder

    router = SemanticRouter(load_routes(routes), minilm_embedder())
    all_scores = router.scores([text])
    scores = all_scores[0].tolist()
    decision = router.decide(all_scores)[0]
    table = Table("route", "adapter", "score", "threshold")
    for r, score in zip(router.routes, scores, strict=True):
        table.add_row(r.name, r.adapter, f"{score:.3f}", _threshold(r.threshold))
    console = Console()
    console.print(table)
    console.print(f"-> [bold]{decision.adapter or 'base model'}[/] (score {decision.score:.3f})")


@app.command("route-eval")
def route_eval(
    routes: RoutesOpt,
    labelled: Annotated[
        Path,
        typer.Option("--labelled", help='JSONL of {"text": ..., "route": NAME or null}.'),
    ],
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Write the routes with calibrated thresholds here (JSON)."),
    ] = None,
) -> None:
    """Routing accuracy on a labelled set, and the best threshold of each route."""
    import dataclasses
    import json

    from r3mes.serve.route_eval import evaluate, load_labelled
    from r3mes.serve.router import SemanticRouter, load_routes, minilm_embedder, routes_to_doc

    parsed = load_routes(routes)
    prompts = load_labelled(labelled, parsed)
    router = SemanticRouter(parsed, minilm_embedder())
    result = evaluate(router, prompts)
    table = Table("route", "support", "threshold", "best threshold", "F1 at best")
    for cal in result.routes:
        table.add_row(
            cal.route,
            str(cal.support),
            _threshold(cal.current_threshold),
            _threshold(cal.best_threshold),
            f"{cal.f1:.3f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"accuracy on {result.total} prompts: {result.accuracy:.3f} with the file's thresholds, "
        f"{result.calibrated_accuracy:.3f} calibrated"
    )
    if write is not None:
        best = {c.route: c.best_threshold for c in result.routes}
        tuned = [dataclasses.replace(r, threshold=best[r.name]) for r in parsed]
        write.write_text(json.dumps(routes_to_doc(tuned), indent=2) + "\n", encoding="utf-8")
        console.print(f"calibrated routes written to {write}")
