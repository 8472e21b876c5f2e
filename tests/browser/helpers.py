"""Helpers for the dashboard's browser tests: page error capture, the Keplr shim, axe-core,
screenshots. (The fixtures live in conftest.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from r3mes.backend import adr036
from r3mes.chain.crypto import SigningKey

HERE = Path(__file__).parent
CHROMIUM = Path(os.environ.get("R3MES_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
VIEWPORTS = {"phone": PHONE, "desktop": DESKTOP}
AXE = HERE / "vendor" / "axe.min.js"


def artifacts_dir() -> Path:
    path = Path(os.environ.get("R3MES_ARTIFACTS") or HERE / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class PageErrors:
    """Uncaught page errors and CSP violations seen by a page: a test ends with none."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        text = message.text
        if message.type == "error" and (
            "Content Security Policy" in text or "Trusted Type" in text or "TrustedHTML" in text
        ):
            self.errors.append(f"console: {text} at {message.location}")


def keplr_shim(page: Any, key: SigningKey) -> list[dict[str, str]]:
    """A `window.keplr` whose signArbitrary calls back into the test, which signs with the
    project's own ADR-036 code (a real signature over the exact bytes Keplr signs)."""
    calls: list[dict[str, str]] = []

    def sign(chain_id: str, signer: str, data: str) -> dict[str, Any]:
        calls.append({"chain_id": chain_id, "signer": signer, "data": data})
        assert signer == key.address, "the page asked to sign for another address"
        return adr036.sign(key, data.encode()).to_json()

    page.expose_function("r3mesTestSign", sign)
    address = json.dumps(key.address)
    page.add_init_script(
        f"""
        window.keplr = {{
          async enable(chainId) {{ return undefined; }},
          async getKey(chainId) {{
            return {{ name: "test wallet", algo: "secp256k1", bech32Address: {address},
                      isNanoLedger: false }};
          }},
          async signArbitrary(chainId, signer, data) {{
            if (typeof data !== "string") throw new Error("the shim signs text only");
            return await window.r3mesTestSign(chainId, signer, data);
          }},
        }};
        """
    )
    return calls


def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now.

    axe is evaluated through the DevTools protocol, so the page's CSP is not loosened for it.
    """
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ["violations"]});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
        }"""
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


def shoot(page: Any, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(page: Any, expression: str, *, timeout_s: float = 30.0, arg: Any = None) -> Any:
    """Poll `expression` (a JS function) until it returns something truthy; that value.

    Playwright's own wait_for_function evaluates strings with eval, which the dashboard's CSP
    (rightly) forbids; page.evaluate goes through the DevTools protocol instead.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {expression}")
        page.wait_for_timeout(200)
