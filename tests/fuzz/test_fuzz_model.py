"""Fuzz the PEFT adapter_config.json parser (adapters are downloaded, so configs are hostile)."""

from __future__ import annotations

import json

from fuzz.harness import fuzz
from fuzz.mutations import json_mutated
from r3mes.model.errors import ModelError
from r3mes.model.peft_io import parse_adapter_config

OURS = {  # what save_peft_adapter writes
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": "r3mes/bitnet-tiny",
    "r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "inference_mode": True,
    "init_lora_weights": True,
    "revision": None,
    "layers_pattern": None,
    "use_rslora": False,
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}
PEFTS = {  # shaped like one PEFT 0.x writes, with the keys we ignore
    **OURS,
    "lora_alpha": 16.0,
    "lora_dropout": 0.05,
    "auto_mapping": None,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "loftq_config": {},
    "layer_replication": None,
    "use_qalora": False,
}


def _parse(text: str) -> object:
    return parse_adapter_config(text, where="adapter_config.json")


def test_parse_adapter_config() -> None:
    seeds = [json.dumps(OURS), json.dumps(PEFTS, indent=2)]
    fuzz("parse_adapter_config", json_mutated(seeds), _parse, (ModelError,))
