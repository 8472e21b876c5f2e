"""The OpenAI-compatible HTTP API over a `ServingEngine` (`create_app`)."""

from r3mes.serve.api.app import create_app

__all__ = ["create_app"]
