"""Shared fixtures for r3mes.node tests: the tiny work profile and a tiny published network
(builders in `support.tiny`)."""

from __future__ import annotations

import pytest
import torch
from support.tiny import TINY_PROFILE, TinyNet, publish_tiny_net

from r3mes.work.profile import WorkProfile


@pytest.fixture(scope="session")
def tiny_profile() -> WorkProfile:
    return TINY_PROFILE


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_net(tmp_path_factory: pytest.TempPathFactory) -> TinyNet:
    return publish_tiny_net(tmp_path_factory.mktemp("tinynet"))
