"""Request bodies of the OpenAI-compatible API (pydantic, strict about unknown fields).

Only what the engine can honour is accepted: `n` must be 1, penalties must be 0, and
unknown fields are rejected with a 400 that names them, so a client never silently gets
something other than what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 200_000
MAX_TOKENS_LIMIT = 100_000


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False
    """vLLM's option: every content chunk also carries the usage so far, so a stream cut
    short (a client that left) is billed for its exact prompt and delivered tokens."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=128)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: Annotated[str, Field(min_length=1, max_length=128)] | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: Annotated[str, Field(max_length=256)] | None = None
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token, up to max_tokens
    (load tests and benchmarks use it to get completions of a known length)."""

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (
            len(value) > 8 or any(not s or len(s) > 128 for s in value)
        ):
            raise ValueError("stop takes at most 8 strings of 1 to 128 characters")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError("penalties are not supported by this server; send 0 or leave it out")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def continuous_usage(self) -> bool:
        options = self.stream_options
        return options is not None and options.include_usage and options.continuous_usage_stats


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None


class CompletionRequest(SamplingFields):
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported per request")
        if isinstance(value, list) and len(value[0]) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class LoadLoraRequest(BaseModel):
    """Exactly one source: `lora_path` (a PEFT directory on the server) or `lora_id`
    (`ID` or `ID@VERSION` in the server's artifact registry)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: Annotated[str, Field(min_length=1, max_length=64)]
    lora_path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    lora_id: Annotated[str, Field(min_length=1, max_length=300)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LoadLoraRequest:
        if (self.lora_path is None) == (self.lora_id is None):
            raise ValueError("give exactly one of lora_path (a directory) or lora_id (registry)")
        return self


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: Annotated[str, Field(min_length=1, max_length=64)]
