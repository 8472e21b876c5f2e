from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch

from r3mes.model.lora import adapter_names
from r3mes.work.canonical import tensors_digest
from r3mes.work.data import Shard, TokenDataset, shard_of
from r3mes.work.encoding import decode_update
from r3mes.work.errors import TrainingError
from r3mes.work.executor import (
    CPU_DET_V1,
    current_executor_class,
    executor_numerics,
    is_deterministic_class,
)
from r3mes.work.submission import build_submission, encode_for_task
from r3mes.work.task import Task
from r3mes.work.training import (
    batch_positions,
    initial_adapter_state,
    run_steps,
    set_gradient_checkpointing,
    start_state,
    train_update,
    train_with_trace,
    trained_layout,
    wants_gradient_checkpointing,
)


def _shard(ds: TokenDataset, task: Task) -> Shard:
    return shard_of(ds, shard_index=task.shard_index, n_shards=task.n_shards)


def test_same_inputs_same_bytes_and_caller_state_restored(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task()
    flags = [p.requires_grad for p in tiny_model.parameters()]
    torch.set_num_threads(2)
    a = train_update(
        task=task, model=tiny_model, adapter_state=None, shard=_shard(domain_dataset, task)
    )
    assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    assert adapter_names(tiny_model) == []
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    torch.set_num_threads(1)
    b = train_update(
        task=task, model=tiny_model, adapter_state=None, shard=_shard(domain_dataset, task)
    )
    assert tensors_digest(a) == tensors_digest(b)
    assert any(float(v.abs().max()) > 0 for v in a.values())
    assert all(k.startswith("base_model.model.model.layers.") for k in a)
    # only the B matrices train (FFA-LoRA): one per targeted projection
    assert all(k.endswith(".lora_B.weight") for k in a) and len(a) == 2 * 2


def test_result_depends_on_shard_miner_and_start(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    base = make_task()
    digests = set()
    for task in (base, make_task(shard_index=1), make_task(miner="remes1other")):
        delta = train_update(
            task=task, model=tiny_model, adapter_state=None, shard=_shard(domain_dataset, task)
        )
        digests.add(tensors_digest(delta))
    assert len(digests) == 3


def test_genesis_adapter_comes_from_the_round_seed(
    tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    a = initial_adapter_state(tiny_model, make_task(miner="remes1a"))
    b = initial_adapter_state(tiny_model, make_task(miner="remes1b"))
    c = initial_adapter_state(tiny_model, make_task(seed=99))
    assert tensors_digest(a) == tensors_digest(b) != tensors_digest(c)
    assert all(float(v.abs().sum()) == 0 for k, v in a.items() if "lora_B" in k)


def test_batch_order_covers_the_shard_each_epoch(make_task: Callable[..., Task]) -> None:
    task = make_task(hyper={"batch_size": 3})
    positions = [p for step in range(4) for p in batch_positions(task, 6, step)]  # 2 epochs
    assert sorted(positions[:6]) == list(range(6)) and sorted(positions[6:]) == list(range(6))
    assert positions[:6] != positions[6:]


def test_trace_digests_and_checkpoints(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task()
    result = train_with_trace(
        task=task,
        model=tiny_model,
        adapter_state=None,
        shard=_shard(domain_dataset, task),
        checkpoint_every=2,
    )
    assert len(result.step_digests) == task.hyper.steps + 1
    assert len(set(result.step_digests)) == len(result.step_digests)
    assert sorted(result.checkpoints) == [0, 2, 4]
    assert result.checkpoints[4].digest() == result.step_digests[-1]


def test_bad_inputs_raise_training_errors(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task()
    with pytest.raises(TrainingError, match="not the task's shard"):
        train_update(
            task=task,
            model=tiny_model,
            adapter_state=None,
            shard=shard_of(domain_dataset, shard_index=1, n_shards=4),
        )
    with pytest.raises(TrainingError, match="seq_len"):
        t = make_task(hyper={"seq_len": 64})
        train_update(task=t, model=tiny_model, adapter_state=None, shard=_shard(domain_dataset, t))
    with pytest.raises(TrainingError, match="LoRA config|lora_B"):
        train_update(
            task=task,
            model=tiny_model,
            adapter_state={"nope": torch.zeros(1)},
            shard=_shard(domain_dataset, task),
        )
    wrong_rank = {
        k: v[:2] if "lora_A" in k else v[:, :2]
        for k, v in initial_adapter_state(tiny_model, task).items()
    }
    with pytest.raises(TrainingError, match="LoRA config"):
        train_update(
            task=task,
            model=tiny_model,
            adapter_state=wrong_rank,
            shard=_shard(domain_dataset, task),
        )
    assert adapter_names(tiny_model) == []


def test_executor_class_is_declared_honestly() -> None:
    assert current_executor_class("cpu") == CPU_DET_V1
    assert current_executor_class(torch.device("cpu")) == CPU_DET_V1
    assert current_executor_class("mps") == "mps-nondet-v1"
    assert not is_deterministic_class(current_executor_class("cuda:0"))
    if not torch.cuda.is_available():
        assert current_executor_class("cuda") == "cuda-nondet-v1"
    for bad in ("gpu0", 3, None):
        with pytest.raises(TrainingError, match="device"):
            current_executor_class(bad)  # type: ignore[arg-type]


def test_submission_is_labelled_with_the_class_of_its_device(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task()
    shard = _shard(domain_dataset, task)
    sub = build_submission(
        task=task, model=tiny_model, adapter_state=None, shard=shard, residual=None
    )
    layout = trained_layout(initial_adapter_state(tiny_model, task))
    assert decode_update(sub.encoded, layout=layout).meta.executor_class == CPU_DET_V1
    # asking for another device than the model's is refused before any work is done
    for device in ("cuda", "meta"):
        with pytest.raises(TrainingError, match="model is on cpu"):
            build_submission(
                task=task,
                model=tiny_model,
                adapter_state=None,
                shard=shard,
                residual=None,
                device=device,
            )
    assert adapter_names(tiny_model) == []


def test_off_cpu_tensors_cannot_claim_the_deterministic_class(
    make_task: Callable[..., Task],
) -> None:
    raw = {"x.lora_B.weight": torch.zeros(4, 2, device="meta")}
    with pytest.raises(TrainingError, match="cpu-fp32-det-v1"):
        encode_for_task(task=make_task(), raw=raw, residual=None, executor_class=CPU_DET_V1)


def test_off_cpu_numerics_restore_the_callers_settings() -> None:
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    with executor_numerics("cuda"):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.are_deterministic_algorithms_enabled()  # no promise made
        assert torch.get_num_threads() == threads
    assert torch.backends.cuda.matmul.allow_tf32 == tf32


def test_training_refuses_a_state_whose_moments_do_not_fit(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task()
    adapter = initial_adapter_state(tiny_model, task)
    start = start_state(adapter)
    key = sorted(start.params)[0]
    bad = dataclasses.replace(start, exp_avg={**start.exp_avg, key: torch.zeros(1)})
    with pytest.raises(TrainingError, match="shape"):
        run_steps(
            task=task,
            model=tiny_model,
            shard=_shard(domain_dataset, task),
            adapter_state=adapter,
            start=bad,
            stop=1,
        )


_CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from pathlib import Path
    from r3mes.model.tiny import make_tiny_model
    from r3mes.work.data import TokenDataset, shard_of
    from r3mes.work.submission import build_submission
    from r3mes.work.task import decode_task
    task = decode_task(bytes.fromhex(sys.argv[2]))
    ds = TokenDataset(Path(sys.argv[3]))
    shard = shard_of(ds, shard_index=task.shard_index, n_shards=task.n_shards)
    sub = build_submission(task=task, model=make_tiny_model(0), adapter_state=None,
                           shard=shard, residual=None)
    print(sub.digest)
    print("torch._dynamo" in sys.modules)  # deterministic mode must not load the compiler
    """
)


@pytest.mark.slow
def test_fresh_processes_at_1_and_2_threads_agree(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    from r3mes.work.submission import build_submission
    from r3mes.work.task import encode_task

    task = make_task()
    digests, compilers = set(), set()
    for threads in ("1", "2", "1"):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                threads,
                encode_task(task).hex(),
                str(domain_dataset.path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        digest, compiler = out.stdout.split()
        digests.add(digest)
        compilers.add(compiler)
    here = build_submission(
        task=task,
        model=tiny_model,
        adapter_state=None,
        shard=_shard(domain_dataset, task),
        residual=None,
    )
    assert digests == {here.digest}
    assert compilers == {"False"}  # ~115 MiB and a second of start-up a miner never uses


def test_gradient_checkpointing_changes_no_update_byte(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    """Recomputing each layer in the backward (a miner's memory choice at 2B) must give the
    same update bytes and step digests as keeping the activations, and the same on re-run."""
    from r3mes.model.modeling import BitNetForCausalLM

    assert isinstance(tiny_model, BitNetForCausalLM)
    task = make_task()
    shard = _shard(domain_dataset, task)
    layer = tiny_model.model.layers[0]
    calls = [0]
    # a pre-hook: the recompute stops early once it has what the backward needs
    hook = layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    runs: dict[str, list[tuple[bytes, tuple[str, ...]]]] = {"on": [], "off": []}
    forwards: dict[str, int] = {}
    try:
        for mode in ("off", "on", "on", "off"):
            assert set_gradient_checkpointing(tiny_model, mode) is (mode == "on")
            calls[0] = 0
            result = train_with_trace(task=task, model=tiny_model, adapter_state=None, shard=shard)
            forwards[mode] = calls[0]
            sub = encode_for_task(
                task=task, raw=result.delta, residual=None, executor_class=CPU_DET_V1
            )
            runs[mode].append((sub.encoded, result.step_digests))
    finally:
        hook.remove()
    assert runs["on"][0] == runs["on"][1] == runs["off"][0] == runs["off"][1]
    steps = task.hyper.steps
    assert forwards == {"off": steps, "on": 2 * steps}  # "on" really recomputed each layer
    assert tiny_model.gradient_checkpointing is False  # the last mode set ("off") stays


def test_gradient_checkpointing_modes(tiny_model: torch.nn.Module) -> None:
    assert not wants_gradient_checkpointing(tiny_model, "auto")  # a tiny model: no need
    assert wants_gradient_checkpointing(tiny_model, "auto", auto_min_params=1000)
    assert wants_gradient_checkpointing(tiny_model, "on")
    assert not wants_gradient_checkpointing(tiny_model, "off")
    with pytest.raises(TrainingError, match="auto, on, off"):
        set_gradient_checkpointing(tiny_model, "yes")
    with pytest.raises(TrainingError, match="cannot recompute"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2), "on")
    assert set_gradient_checkpointing(torch.nn.Linear(2, 2), "auto") is False
