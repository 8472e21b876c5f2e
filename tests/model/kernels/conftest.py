"""Fixtures shared by the native ternary kernel's tests."""

from __future__ import annotations

import os

import pytest

from r3mes.model.kernels import ternary as kernels


@pytest.fixture(scope="module")
def isas() -> list[str]:
    """The dispatch paths this CPU runs; a missing kernel fails in CI, skips elsewhere."""
    if not kernels.available():
        if os.environ.get("CI"):
            pytest.fail("the native ternary kernel is not built in CI")
        pytest.skip("native ternary kernel not built here")
    return kernels.supported_isas()
