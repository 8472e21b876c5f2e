"""`r3mes model ...`: the BitNet b1.58 base model (init, pretrain, generate, info, convert)."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The BitNet b1.58 base model: init, pretrain, generate, inspect, convert.")

ISA_ENV = "R3MES_TERNARY_ISA"
"""Forces the ternary kernel path (scalar, avx2, avx512bw, avx512vnni, neon, neon_dotprod, or
reference for the torch path) for every model command; unset: the best this CPU runs."""


@app.callback()
def _kernel_path() -> None:
    from r3mes.model.kernels.library import set_isa  # not `ternary`: that one imports torch

    forced = os.environ.get(ISA_ENV)
    if forced:
        set_isa(forced)


ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Checkpoint folder (default: the shipped r3mes-bitnet-mini)."),
]


ThreadsOpt = Annotated[
    int,
    typer.Option("--threads", min=0, help="CPU threads for the ternary kernels (0: every core)."),
]


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))


class EmbeddingDtype(StrEnum):
    """How a loaded model holds its embedding and head (`load_pretrained(embedding_dtype=)`)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


EmbeddingDtypeOpt = Annotated[
    EmbeddingDtype,
    typer.Option(
        "--embedding-dtype",
        envvar="R3MES_EMBEDDING_DTYPE",
        help="Hold the embedding and head in float32, or in bfloat16 (packed checkpoints: half "
        "the memory and a third fewer bytes per token at the 2B shape; exact for checkpoints "
        "stored in bfloat16, such as 2B-4T).",
    ),
]


class Runtime(StrEnum):
    """What runs a `generate`: the torch model, or the native kernels with numpy alone."""

    torch = "torch"
    torchfree = "torchfree"


RuntimeOpt = Annotated[
    Runtime,
    typer.Option(
        "--runtime",
        envvar="R3MES_RUNTIME",
        help="torch: the torch model (any device, LoRA adapters). torchfree: the native "
        "kernels with numpy, never importing torch: about 500 MiB less memory and faster on a "
        "CPU; packed checkpoints, embedding held in bfloat16.",
    ),
]


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (CUDA, else Apple MPS, else CPU), cpu or cuda.",
    ),
]


def _model_dir(model: Path | None) -> Path:
    from r3mes.model.shipped import shipped_model_dir

    return model if model is not None else shipped_model_dir()


def _base_name(model: Path | None) -> str:
    """The base-model name an adapter for this model must record."""
    from r3mes.model.checkpoint_files import recorded_name
    from r3mes.model.shipped import SHIPPED_MODEL_NAME, shipped_model_dir

    if model is None or model.resolve() == shipped_model_dir().resolve():
        return SHIPPED_MODEL_NAME
    return recorded_name(model)


@app.command()
def init(
    out: Annotated[Path, typer.Option("--out", help="Empty folder to write the checkpoint into.")],
    config: Annotated[
        str, typer.Option("--config", help="Model shape: bitnet-2b4t or bitnet-quick.")
    ] = "bitnet-2b4t",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-ternary packed checkpoint of a real BitNet shape (HF layout, no download)."""
    from r3mes.model.synthetic import preset, write_random_checkpoint

    shape = preset(config)
    write_random_checkpoint(shape, out, seed=seed)
    Console().print(f"wrote random {config} checkpoint (seed {seed}) to {out}")


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the trained model into.")],
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 4096,
    hidden_size: Annotated[int, typer.Option(help="Model width.")] = 256,
    intermediate_size: Annotated[int, typer.Option(help="MLP width.")] = 688,
    num_hidden_layers: Annotated[int, typer.Option(help="Decoder layers.")] = 4,
    num_attention_heads: Annotated[int, typer.Option(help="Query heads.")] = 4,
    num_key_value_heads: Annotated[int, typer.Option(help="Key/value heads.")] = 2,
    seq_len: Annotated[int, typer.Option(help="Training window in tokens.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = 16,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 600,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 50,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Initialisation and sampling seed.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 1,
    eval_windows: Annotated[int, typer.Option(help="Held-out windows scored (0: all).")] = 200,
    device: DeviceOpt = "auto",
) -> None:
    """Train a BitNet b1.58 model from scratch on the stdlib docs corpus (PSF licence)."""
    from r3mes.model.checkpoint import check_destination
    from r3mes.model.device import resolve_device
    from r3mes.model.pretrain import PretrainConfig
    from r3mes.model.pretrain import pretrain as run_pretrain

    check_destination(out)
    config = PretrainConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        seq_len=seq_len,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        seed=seed,
        threads=threads,
        eval_windows=eval_windows,
        device=resolve_device(device),
    )
    console = Console()
    metrics = run_pretrain(config, out, report=console.print)
    console.print(
        f"[bold]held-out perplexity[/] {metrics['heldout_perplexity']:.2f} "
        f"(unigram baseline {metrics['unigram_perplexity']:.2f}); model written to {out}"
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    model: ModelOpt = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter folder to apply.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    embedding_dtype: EmbeddingDtypeOpt = EmbeddingDtype.float32,
    runtime: RuntimeOpt = Runtime.torch,
) -> None:
    """Continue PROMPT with the model, streaming the text as it is generated."""
    from r3mes.model.decoding import GenerationConfig
    from r3mes.model.tokenizer import load_tokenizer

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_strings=tuple(stop or ()),
    )
    folder = _model_dir(model)
    tokenizer = load_tokenizer(folder)
    if runtime == Runtime.torchfree:
        from r3mes.model import torchfree

        if device not in ("auto", "cpu"):
            raise typer.BadParameter("the torchfree runtime runs on the CPU", param_hint="--device")
        lean = torchfree.TorchFreeModel.load(folder, threads=threads or None)
        if adapter is not None:
            lean.attach_adapter(adapter, expected_base=_base_name(model))
        pieces = torchfree.stream_generate(lean, tokenizer, prompt, config)
    else:
        from r3mes.model.checkpoint import load_pretrained
        from r3mes.model.device import resolve_device
        from r3mes.model.generate import stream_generate
        from r3mes.model.peft_io import attach_peft_adapter

        target = resolve_device(device)
        _set_threads(threads)
        net = load_pretrained(folder, embedding_dtype=embedding_dtype.value)
        if adapter is not None:
            attach_peft_adapter(net, adapter, name="cli", expected_base=_base_name(model))
        net.to(target)
        pieces = stream_generate(net, tokenizer, prompt, config)  # checks the request first
    console = Console(highlight=False)
    console.print(prompt, end="", style="bold")
    for piece in pieces:
        console.print(piece, end="", markup=False)
    console.print()


@app.command()
def info(model: ModelOpt = None) -> None:
    """Show a checkpoint's configuration, sizes, and this machine's device and memory profile."""
    from r3mes.model.checkpoint import load_pretrained
    from r3mes.model.device import default_profile, detect_device

    folder = _model_dir(model)
    net = load_pretrained(folder)
    packed_bytes = sum(m.weight_bytes() for _, m in net.bit_linears())
    ternary_params = sum(m.in_features * m.out_features for _, m in net.bit_linears())
    table = Table(title=str(folder), show_header=False)
    for key, value in net.config.to_dict().items():
        if key not in ("architectures", "rope_parameters"):
            table.add_row(key, str(value))
    table.add_row("parameters", f"{net.num_parameters():,}")
    table.add_row("ternary parameters", f"{ternary_params:,}")
    table.add_row(
        "packed ternary bytes", f"{packed_bytes:,} ({packed_bytes / ternary_params:.3f} B/param)"
    )
    files = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    table.add_row("folder size", f"{files:,} bytes")
    metrics = folder / "metrics.json"
    data: Any = None
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            table.add_row("metrics.json", "unreadable (not valid JSON)")
    if isinstance(data, dict):
        for key in ("heldout_perplexity", "unigram_perplexity"):
            if isinstance(data.get(key), int | float):
                table.add_row(key, f"{data[key]:.2f}")
    detected = detect_device()
    profile = default_profile(detected)
    table.add_row("detected device", detected)
    table.add_row(
        "memory profile",
        f"{profile.name} (default LoRA rank {profile.lora_rank}, batch {profile.batch_size})",
    )
    Console().print(table)


@app.command("export-gguf")
def export_gguf(
    out: Annotated[Path, typer.Option("--out", help="GGUF file to write (replaced).")],
    model: ModelOpt = None,
    embedding: Annotated[
        str,
        typer.Option(help="Embedding type: auto (as the checkpoint stores it), f32, f16 or bf16."),
    ] = "auto",
    vocab: Annotated[
        str,
        typer.Option(
            help="auto (tokenizer.json if present, else synthetic), tokenizer or synthetic."
        ),
    ] = "auto",
) -> None:
    """Write the checkpoint as one GGUF file for llama.cpp (bitnet architecture, TQ2_0).

    Needs llama.cpp's `gguf` package: pip install -e '.[llamacpp]'.  llama.cpp's bitnet graph
    applies SiLU in the FFN where this model applies squared ReLU: same cost, other logits.
    """
    from r3mes.model.gguf_export import export_gguf as write_gguf

    result = write_gguf(_model_dir(model), out, embedding_type=embedding, vocab=vocab)
    sizes = ", ".join(f"{kind} {size:,} B" for kind, size in sorted(result.bytes_by_type().items()))
    Console().print(
        f"wrote {result.path} ({len(result.tensors)} tensors: {sizes}; "
        f"{result.vocab_source} vocabulary of {result.vocab_size} tokens)"
    )


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Checkpoint folder to read.")],
    destination: Annotated[Path, typer.Argument(help="Folder to write (created).")],
    packed: Annotated[
        bool, typer.Option("--packed/--master", help="Write packed 2-bit or float master weights.")
    ] = True,
) -> None:
    """Convert a checkpoint between HF float master weights and the packed 2-bit format."""
    import shutil

    from r3mes.model.checkpoint import check_destination, load_pretrained, save_pretrained
    from r3mes.model.errors import CheckpointError

    if destination.resolve() == source.resolve():
        raise CheckpointError(destination, "destination must differ from the source folder")
    check_destination(destination)
    net = load_pretrained(source)
    save_pretrained(net, destination, packed=packed)
    for extra in ("tokenizer.json", "SOURCES.md", "metrics.json"):
        if (source / extra).is_file():
            shutil.copyfile(source / extra, destination / extra)
    kind = "packed" if packed else "master"
    Console().print(f"wrote {kind} checkpoint to {destination}")
