"""Pretrain a small BitNet b1.58 model from scratch on the stdlib documentation corpus.

Deterministic for one Python version and torch build: the corpus order, the held-out split
(`corpus.split_corpus`), the tokenizer and the batch sampling (a seeded `torch.Generator`)
are all fixed by `PretrainConfig`. Writes a packed checkpoint, `tokenizer.json`,
`metrics.json` (held-out perplexity next to a unigram baseline on the same tokens) and
`SOURCES.md` into the output folder.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from r3mes.model.checkpoint import check_destination, save_pretrained
from r3mes.model.config import BitNetConfig
from r3mes.model.corpus import HELDOUT_MODULUS, SOURCES, build_corpus, split_corpus
from r3mes.model.errors import ModelError
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tokenizer import Tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)
MAX_POSITIONS = 2048
"""max_position_embeddings of every pretrained model."""


@dataclass(frozen=True)
class PretrainConfig:
    """Every knob of a pretraining run; recorded in metrics.json."""

    vocab_size: int = 4096
    """BPE vocabulary size (3 special tokens included)."""
    hidden_size: int = 256
    """Model width."""
    intermediate_size: int = 688
    """MLP width."""
    num_hidden_layers: int = 4
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads."""
    num_key_value_heads: int = 2
    """Key/value heads (GQA)."""
    seq_len: int = 128
    """Training window length in tokens."""
    batch_size: int = 16
    """Windows per optimizer step."""
    steps: int = 600
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak learning rate (BitNet trains well with a high one), cosine decayed to 10 %."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    seed: int = 0
    """Seeds initialisation and batch sampling."""
    threads: int = 1
    """torch CPU threads."""
    eval_windows: int = 200
    """Held-out windows scored for perplexity (0 = all)."""
    device: str = "cpu"
    """torch device that trains: "cpu", "cuda" or "mps" (numerics differ between devices)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                if not isinstance(value, str):
                    raise ModelError(f"pretrain {f.name} must be a string, got {value!r}")
                continue
            wants_int = isinstance(f.default, int)
            ok = isinstance(value, int) if wants_int else isinstance(value, int | float)
            if isinstance(value, bool) or not ok:
                kind = "an integer" if wants_int else "a number"
                raise ModelError(f"pretrain {f.name} must be {kind}, got {value!r}")
        for name in ("seq_len", "batch_size", "steps", "threads"):
            if getattr(self, name) <= 0:
                raise ModelError(f"pretrain {name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_windows", "seed"):
            if getattr(self, name) < 0:
                raise ModelError(f"pretrain {name} must be >= 0, got {getattr(self, name)}")
        if self.seq_len > MAX_POSITIONS:
            raise ModelError(
                f"pretrain seq_len must be at most {MAX_POSITIONS} (max_position_embeddings), "
                f"got {self.seq_len}"
            )
        if not 259 <= self.vocab_size <= 1_000_000:
            raise ModelError(
                f"pretrain vocab_size must be in 259..1000000 (256 bytes + 3 special tokens), "
                f"got {self.vocab_size}"
            )
        if self.seed >= 2**63:
            raise ModelError(f"pretrain seed must be below 2**63, got {self.seed}")
        if not 0 < self.lr < 1:  # also refuses NaN
            raise ModelError(f"pretrain lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.weight_decay <= 1:
            raise ModelError(f"pretrain weight_decay must be in [0, 1], got {self.weight_decay}")
        if self.device not in ("cpu", "cuda", "mps"):
            raise ModelError(f"pretrain device must be cpu, cuda or mps, got {self.device!r}")
        self.architecture(self.vocab_size)  # bad sizes fail now, before any corpus work

    def architecture(self, vocab_size: int, tokenizer: Tokenizer | None = None) -> BitNetConfig:
        """The architecture this run trains (special token ids from `tokenizer` when given)."""
        return BitNetConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_id if tokenizer else None,
            eos_token_id=tokenizer.eos_id if tokenizer else None,
            pad_token_id=tokenizer.pad_id if tokenizer else None,
        )

    def model_config(self, tokenizer: Tokenizer) -> BitNetConfig:
        """The architecture this run trains, sized to the trained tokenizer."""
        return self.architecture(tokenizer.vocab_size, tokenizer)


def token_stream(tokenizer: Tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents' ids, each followed by EOS, as one LongTensor."""
    ids: list[int] = []
    for encoded in tokenizer.encode_batch(docs):
        ids.extend(encoded)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def heldout_windows(stream: torch.Tensor, seq_len: int, limit: int) -> torch.Tensor:
    """Non-overlapping (N, seq_len + 1) windows from the start of `stream`."""
    n = (stream.numel() - 1) // seq_len
    if limit:
        n = min(n, limit)
    if n == 0:
        raise ModelError("held-out split is shorter than one window")
    return torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


@torch.no_grad()
def perplexity(model: BitNetForCausalLM, windows: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token cross-entropy) over every position of `windows`."""
    model.eval()
    device = model.lm_head.weight.device
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start : start + batch_size].to(device)
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


def unigram_perplexity(train: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of add-one smoothed train-set token frequencies on the same predicted tokens."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    targets = windows[:, 1:].reshape(-1)
    return math.exp(float(-logp[targets].mean()))


def _lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(
    config: PretrainConfig,
    model: BitNetForCausalLM,
    train: torch.Tensor,
    report: Callable[[str], None],
) -> float:
    """Run the optimizer loop; returns the final training loss."""
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    loss_value, started = float("nan"), time.monotonic()
    for step in range(config.steps):
        starts = torch.randint(
            0, train.numel() - config.seq_len - 1, (config.batch_size,), generator=gen
        )
        batch = torch.stack([train[s : s + config.seq_len + 1] for s in starts.tolist()])
        batch = batch.to(config.device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        if step % 50 == 0 or step == config.steps - 1:
            elapsed = time.monotonic() - started
            report(f"step {step}/{config.steps} loss {loss_value:.3f} ({elapsed:.0f} s)")
    return loss_value


def pretrain(
    config: PretrainConfig, out_dir: Path, report: Callable[[str], None] = logger.info
) -> dict[str, Any]:
    """Build corpus and tokenizer, train, freeze, evaluate, and write the model folder."""
    check_destination(out_dir)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    train_docs, heldout_docs = split_corpus(build_corpus())
    report(f"corpus: {len(train_docs)} train / {len(heldout_docs)} held-out documents")
    tokenizer = train_bpe_tokenizer(train_docs, config.vocab_size)
    train = token_stream(tokenizer, train_docs)
    heldout = token_stream(tokenizer, heldout_docs)
    report(f"tokens: {train.numel()} train / {heldout.numel()} held-out")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BitNetForCausalLM(config.model_config(tokenizer))  # initialised on the CPU
    model.to(config.device)
    final_loss = train_model(config, model, train, report)
    model.freeze_backbone()
    windows = heldout_windows(heldout, config.seq_len, config.eval_windows)
    metrics: dict[str, Any] = {
        "heldout_perplexity": perplexity(model, windows),
        "unigram_perplexity": unigram_perplexity(train, windows, tokenizer.vocab_size),
        "heldout_tokens_scored": int(windows[:, 1:].numel()),
        "final_train_loss": final_loss,
        "train_tokens": int(train.numel()),
        "parameters": model.num_parameters(),
        "seconds": round(time.monotonic() - started, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "config": asdict(config),
    }
    write_model_folder(out_dir, model=model, tokenizer=tokenizer, metrics=metrics, config=config)
    report(
        f"held-out perplexity {metrics['heldout_perplexity']:.2f} "
        f"vs unigram {metrics['unigram_perplexity']:.2f}"
    )
    return metrics


def pretrain_command(config: PretrainConfig, out_dir: Path) -> str:
    """The `r3mes model pretrain` command line that reproduces `config`.

    `--device` is always written: numerics differ between devices and the command's own
    default is "auto".
    """
    defaults = PretrainConfig()
    flags = [
        f"--{name.replace('_', '-')} {value}"
        for name, value in asdict(config).items()
        if value != getattr(defaults, name) and name != "device"
    ]
    return " ".join(["r3mes model pretrain --out", str(out_dir), *flags, "--device", config.device])


def write_model_folder(
    out_dir: Path,
    *,
    model: BitNetForCausalLM,
    tokenizer: Tokenizer,
    metrics: dict[str, Any],
    config: PretrainConfig,
) -> None:
    """Packed checkpoint, tokenizer.json, metrics.json and SOURCES.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out_dir, packed=True)
    tokenizer.save(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    sources = "\n".join(f"- {s}" for s in SOURCES)
    (out_dir / "SOURCES.md").write_text(
        "# r3mes-bitnet-mini: training data and provenance\n\n"
        "Trained from scratch by `r3mes.model.pretrain` on text that ships with CPython\n"
        f"{metrics['python']} (no download):\n\n{sources}\n\n"
        "Licence of the source text: Python Software Foundation License Version 2\n"
        "(https://docs.python.org/3/license.html). The model weights are derived from it.\n\n"
        "Held-out split: a document is held out when sha256(text) mod "
        f"{HELDOUT_MODULUS} == 0 (`r3mes.model.corpus.split_corpus`).\n\n"
        f"Command:\n\n    {pretrain_command(config, Path('src/r3mes/assets/base-model'))}\n"
    )
