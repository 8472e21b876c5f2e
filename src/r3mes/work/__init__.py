"""r3mes.work: the useful-work protocol, pure and deterministic.

Miner, validator and proposer all call the same functions:

* `task`        -- `Task` / `HyperParams`, canonical versioned bytes, `task_id`
* `data`        -- token dataset files (memmap), train / held-out split, shards, shard assignment
* `domain`      -- the domain corpus (Python standard library source)
* `executor`    -- executor classes by device (`current_executor_class`), their numerics
* `training`    -- deterministic LoRA training: `train_update`, `train_with_trace`
* `compression` -- top-k with error feedback
* `encoding`    -- canonical update encoding (layout by digest) and digest
* `varint`      -- LEB128 gap coding of the kept indices
* `submission`  -- raw delta -> submitted bytes (`build_submission`, `encode_for_task`)
* `verify`      -- re-execution verification: `verify` -> `Verdict`
* `proof`       -- step digests, Merkle root, `verify_steps`, `first_divergence`
* `trace`       -- the miner's step trace (digests + checkpoints), canonical bytes
* `spot`        -- spot checks: seeded segment sample, Adam screen, escalation to `verify`
* `dispute`     -- bisection over two traces, single-step referee re-execution
* `cheats`      -- FAULT INJECTION: the cheat catalogue (benchmarks, tests)
* `aggregate`   -- weighted mean of verified updates into the next adapter version
* `evaluate`    -- held-out loss, perplexity, contribution score
* `canonical`, `boundedjson` -- canonical safetensors bytes, JSON parsing with a depth bound
"""
