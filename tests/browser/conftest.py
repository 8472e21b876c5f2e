"""Browser tests of the dashboard: Playwright (Python) driving Debian's Chromium.

No browser is ever downloaded: the tests use `/usr/bin/chromium` (or `R3MES_CHROMIUM`).
Without it they skip on a developer's machine and fail when `CI` is set. Screenshots of every
page at phone and desktop width land in `tests/browser/artifacts/` (or `$R3MES_ARTIFACTS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from browser.helpers import CHROMIUM, LAUNCH_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module (Playwright's sync API holds an event loop while it
    runs, so it must be closed before async tests of other modules run)."""
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()
