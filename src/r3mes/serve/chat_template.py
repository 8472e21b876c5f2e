"""The chat template of the shipped base model.

A conversation is rendered as blocks, one per message, then an open assistant block::

    <|system|>
    You are helpful.
    <|user|>
    Hello
    <|assistant|>

Each block is a role marker on its own line followed by the content and a newline. The
model answers after the final ``<|assistant|>`` line and stops at its EOS token; generation
also stops at the next role marker (``STOP_MARKERS``), so a model that keeps writing the
conversation never leaks the other side of it into a reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from r3mes.serve.errors import InvalidRequest

ROLES = ("system", "user", "assistant")
STOP_MARKERS = ("<|user|>", "<|system|>")
MAX_MESSAGES = 256


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    """One of ``system``, ``user``, ``assistant``."""
    content: str
    """The text of the turn."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequest(
                f"message role {self.role!r} is not supported; use one of {', '.join(ROLES)}",
                param="messages",
            )


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """Render `messages` into the prompt text, ending with an open assistant block."""
    if not messages:
        raise InvalidRequest("messages must contain at least one message", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES} messages are accepted", param="messages")
    parts = [f"<|{m.role}|>\n{m.content}\n" for m in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)
