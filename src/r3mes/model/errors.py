"""Errors raised by `r3mes.model`; each message names the file or value and what to do."""

from __future__ import annotations

from r3mes.errors import R3mesError


class ModelError(R3mesError):
    """Base class of every error the model package raises on purpose."""


class ConfigError(ModelError):
    """A model configuration is malformed (unknown key, wrong type, inconsistent sizes)."""


class CheckpointError(ModelError):
    """A checkpoint on disk is missing, corrupt, truncated or does not fit the model."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class AdapterError(ModelError):
    """A LoRA adapter is malformed or was made for another base model."""


class TokenizerError(ModelError):
    """A tokenizer file is missing or malformed."""


class GenerationError(ModelError):
    """Generation was asked for with invalid settings or inputs."""
