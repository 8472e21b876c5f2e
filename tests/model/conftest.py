"""Fixtures shared by the model tests: which ternary kernel path BitLinear runs."""

from collections.abc import Iterator

import pytest

from r3mes.model.kernels import ternary as kernels


@pytest.fixture
def reference_path() -> Iterator[None]:
    """BitLinear on its torch path (unpacked copy + float matmul) for the test."""
    kernels.set_isa(kernels.REFERENCE)
    try:
        yield
    finally:
        kernels.set_isa(None)
