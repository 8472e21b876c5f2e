"""The dashboard in a real browser against a real backend process (no ledger followed):
the strict CSP holds with no violation, model output from storage renders as sanitised
Markdown, keyboard navigation works, and the logged-out pages pass axe at both widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser.harness import running_backend
from browser.helpers import VIEWPORTS, PageErrors, keplr_shim, run_axe, shoot, wait_until

from r3mes.chain.crypto import SigningKey
from r3mes.chain.keystore import Keystore
from r3mes.paths import Home

pytestmark = pytest.mark.timeout(300)

EVIL_OUTPUT = (
    "Here is **bold** and `code`.\n\n"
    "```python\nprint('<b>not bold</b>')\n```\n\n"
    "<img src=x onerror=\"window.__pwned='img'\">\n\n"
    "<script>window.__pwned='script'</script>\n\n"
    "[click](javascript:window.__pwned='link') "
    "[safe](https://example.org/docs)\n\n"
    '<a href="#" onclick="window.__pwned=\'onclick\'">x</a>'
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-home")


@pytest.fixture(scope="module")
def backend(home: Path) -> Iterator[str]:
    with running_backend(home) as (url, _):
        yield url


def test_served_with_a_strict_csp_and_no_violation(browser: Any, backend: str) -> None:
    response = httpx.get(backend + "/", timeout=10)
    csp = response.headers["content-security-policy"]
    for rule in (
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ):
        assert rule in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "connect-src 'self' ws://127.0.0.1:" in csp
    page = browser.new_page()
    errors = PageErrors(page)
    for route in ("chat", "login", "network", "account", "address/remes1notanaddress"):
        page.goto(f"{backend}/#/{route}")
        page.wait_for_selector("#main h1")
    page.close()
    assert errors.errors == []


def open_stored_chat(page: Any, backend: str, question: str, answer: str) -> None:
    """Open the dashboard on one conversation stored in the browser: a question and the
    model's answer (as the chat page keeps them in localStorage)."""
    conversation = {
        "id": "c1",
        "title": "stored",
        "model": "auto",
        "updated": 1,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer, "meta": {"cost": 7}},
        ],
    }
    page.goto(backend + "/")
    page.evaluate(
        "c => localStorage.setItem('r3mes.conversations', JSON.stringify([c]))", conversation
    )
    page.reload()


def test_a_wide_code_block_scrolls_from_the_keyboard(browser: Any, backend: str) -> None:
    """A code line wider than a phone scrolls inside its block, which takes keyboard focus
    (axe's scrollable-region-focusable failed on the chat page when a model wrote one)."""
    wide = "```\n" + "x = '" + "0123456789" * 30 + "'\n```"
    page = browser.new_page()
    page.set_viewport_size(VIEWPORTS["phone"])
    try:
        open_stored_chat(page, backend, "a long line", wide)
        block = page.locator(".message.assistant .message-body pre")
        block.wait_for()
        assert block.evaluate("e => e.scrollWidth > e.clientWidth")  # it does scroll
        assert block.get_attribute("tabindex") == "0"
        block.focus()
        page.keyboard.press("ArrowRight")
        wait_until(page, "() => document.querySelector('.message-body pre').scrollLeft > 0")
        assert run_axe(page) == []
    finally:
        page.close()


def test_model_output_is_sanitised_markdown(browser: Any, backend: str) -> None:
    page = browser.new_page()
    errors = PageErrors(page)
    open_stored_chat(page, backend, "<b>user text</b> stays text", EVIL_OUTPUT)
    answer = page.locator(".message.assistant .message-body")
    answer.wait_for()
    assert answer.locator("strong").inner_text() == "bold"
    assert answer.locator("pre code").inner_text().strip() == "print('<b>not bold</b>')"
    assert answer.locator("img, script, [onerror], [onclick]").count() == 0
    text = answer.inner_text()
    assert "<img src=x onerror=" in text and "<script>window.__pwned='script'</script>" in text
    hrefs = answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert "https://example.org/docs" in hrefs
    assert not any(h and h.lower().startswith("javascript:") for h in hrefs)
    for link in answer.locator("a[href^='http']").all():
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    user = page.locator(".message.user .message-body")
    assert user.inner_text() == "<b>user text</b> stays text"
    assert user.locator("b").count() == 0
    assert page.locator(".message.assistant .cost").inner_text() == "cost: 7 credits"
    for link in answer.locator("a").all():
        link.click(modifiers=["Control"])  # would run an inline handler if one survived
    assert page.evaluate("window.__pwned") is None
    page.close()
    assert errors.errors == []


def test_keyboard_reaches_every_page(browser: Any, backend: str) -> None:
    page = browser.new_page()
    page.goto(backend + "/#/chat")
    page.wait_for_selector("#main h1")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.tagName") == "H1"
    seen = []
    page.evaluate("document.querySelector('.brand').focus()")
    for _ in range(4):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert ["Chat", "Network", "Account", "Log in"] == seen
    # back one; what follows "Log in" depends on what the page has loaded by then
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Account"
    page.keyboard.press("Enter")
    # the route changes first and the page renders after it: wait for the heading itself
    wait_until(page, "() => document.querySelector('#main h1')?.textContent.trim() === 'Account'")
    page.close()


@pytest.mark.parametrize("width", sorted(VIEWPORTS))
def test_logged_out_pages_pass_axe(browser: Any, backend: str, width: str) -> None:
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=VIEWPORTS[width], color_scheme=scheme)
        page = context.new_page()
        for route in ("chat", "login", "account"):
            page.goto(f"{backend}/#/{route}")
            page.wait_for_selector("#main h1")
            page.wait_for_timeout(300)
            shoot(page, f"loggedout-{route}-{width}-{scheme}")
            assert run_axe(page) == [], f"{route} at {width} ({scheme})"
            assert (
                page.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[width]["width"]
            ), f"{route} scrolls sideways at {width}"
        context.close()


def test_web_assets_are_packaged(backend: str) -> None:
    root = Path(__file__).parents[2] / "src" / "r3mes" / "backend" / "web"
    for path in ("js/main.js", "vendor/marked.esm.js", "vendor/purify.es.mjs", "app.css"):
        response = httpx.get(f"{backend}/ui/{path}", timeout=10)
        assert response.status_code == 200
        assert response.content == (root / path).read_bytes()
    for bad in ("../settings.py", "..%2f..%2fsettings.py", ".hidden", "vendor/VENDOR.mdx"):
        assert httpx.get(f"{backend}/ui/{bad}", timeout=10).status_code == 404, bad
    assert json.loads(httpx.get(f"{backend}/api/nothing-here", timeout=10).text)["error"]


def test_login_by_pasting_the_cli_signature(browser: Any, backend: str, home: Path) -> None:
    """The command the page shows, run for real (`r3mes wallet sign-login`), logs in."""
    passphrase = "browser-test-passphrase"
    info, _ = Keystore(Home(root=home).keys, scrypt_n=2**12).create("cli", passphrase=passphrase)
    page = browser.new_page()
    errors = PageErrors(page)
    page.goto(f"{backend}/#/login")
    page.get_by_label("Wallet address").fill(info.address)
    page.get_by_role("button", name="Get a login message").click()
    command = page.locator("[data-testid=sign-command]").inner_text()
    first, _, rest = command.partition("\n")
    message = rest.rsplit("\nR3MES_CHALLENGE", 1)[0]
    assert first.startswith("r3mes wallet sign-login --key YOUR_KEY_NAME --challenge -")
    signed = subprocess.run(
        [sys.executable, "-m", "r3mes.cli.main", "wallet", "sign-login", "--key", "cli"]
        + ["--challenge", "-", "--home", str(home)],
        input=message + "\n",
        env={**os.environ, "R3MES_PASSPHRASE": passphrase},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    page.get_by_label("What the command printed (JSON)").fill(signed.stdout)
    page.get_by_role("button", name="Log in").click()
    wait_until(page, "() => location.hash === '#/chat'")
    page.get_by_role("button", name="Log out").wait_for(state="visible")
    page.get_by_role("button", name="Log out").click()
    wait_until(page, "() => location.hash === '#/login'")
    assert not any(c["name"] == "r3mes_access" for c in page.context.cookies())
    page.close()
    assert errors.errors == []


def test_session_expiry_keeps_the_chat(browser: Any, backend: str) -> None:
    """When the session ends mid-chat, the question and the conversation stay; logging in
    again (here with an API key, kept only in sessionStorage) continues where it was."""
    key = SigningKey.generate()
    context = browser.new_context()
    page = context.new_page()
    errors = PageErrors(page)
    keplr_shim(page, key)
    page.goto(f"{backend}/#/login")
    page.get_by_role("button", name="Sign in with a browser wallet").click()
    wait_until(page, "() => location.hash === '#/chat'")
    page.goto(f"{backend}/#/account")
    page.get_by_label("Key name").fill("tab")
    page.get_by_role("button", name="Create key").click()
    api_key = page.locator("[data-testid=new-key]").inner_text()
    page.goto(f"{backend}/#/chat")
    page.get_by_label("Message", exact=True).fill("first question")
    context.clear_cookies()  # the session is gone (expired, revoked, logged out elsewhere)
    page.get_by_role("button", name="Send").click()
    page.get_by_role("alert").filter(has_text="Your session has expired").wait_for()
    assert page.get_by_label("Message", exact=True).input_value() == "first question"
    assert page.locator(".message.user").last.inner_text().endswith("first question")
    page.get_by_role("link", name="Log in again").click()
    page.get_by_role("textbox", name="API key").fill(api_key)
    page.get_by_role("button", name="Use this key").click()
    wait_until(page, "() => location.hash === '#/chat'")
    page.get_by_label("Message", exact=True).wait_for(state="visible")
    assert page.get_by_label("Message", exact=True).input_value() == "first question"
    assert page.evaluate("() => sessionStorage.getItem('r3mes.apiKey')") == api_key
    assert api_key not in page.evaluate("() => JSON.stringify({...localStorage})")
    context.close()
    assert errors.errors == []


def test_an_expired_access_cookie_is_renewed_silently(browser: Any, backend: str) -> None:
    """The short-lived access cookie is gone; the refresh cookie (with the CSRF header)
    renews the session without the user noticing."""
    context = browser.new_context()
    page = context.new_page()
    errors = PageErrors(page)
    keplr_shim(page, SigningKey.generate())
    page.goto(f"{backend}/#/login")
    page.get_by_role("button", name="Sign in with a browser wallet").click()
    wait_until(page, "() => location.hash === '#/chat'")
    old = {c["name"]: c["value"] for c in context.cookies()}
    context.clear_cookies(name="r3mes_access")
    refreshes: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: refreshes.append(r.headers) if r.url.endswith("/api/auth/refresh") else None,
    )
    page.goto(f"{backend}/#/account")
    page.locator("[data-testid=balance-available]").wait_for()
    assert page.locator("#banner .banner").count() == 0
    assert len(refreshes) == 1 and refreshes[0]["x-csrf-token"] == old["r3mes_csrf"]
    new = {c["name"]: c["value"] for c in context.cookies()}
    assert new["r3mes_access"] and new["r3mes_refresh"] != old["r3mes_refresh"]  # rotated
    context.close()
    assert errors.errors == []
