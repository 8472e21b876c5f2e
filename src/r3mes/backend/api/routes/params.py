"""Path and query parameters the explorer routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from r3mes.backend.errors import InvalidRequest
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError


def _address(address: Annotated[str, Path(max_length=128)]) -> str:
    try:
        return validate_address(address)
    except AddressError as exc:
        raise InvalidRequest(f"address: {exc}") from exc


AddressPath = Annotated[str, Depends(_address)]
"""A `remes1...` address in the path, checked and lower-cased (400 otherwise)."""
