"""The dashboard's view of the checks around the work, in a real browser: merge proposals
with their validators' verdicts, disputes and how they ended, stake still slashable,
slashes with their reasons and validator penalties. The data comes from a real devnet
driven through two rounds of the explorer scenario (a rejected merge, a cheater's lost
challenge, an overturned verdict, unbonding and withdrawal) and a backend indexing it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser.harness import running_backend
from browser.helpers import VIEWPORTS, PageErrors, run_axe, shoot, wait_until
from support.explorer_scenario import CHEAT, PROPOSER, V3, play, start_devnet
from support.net import free_port

from r3mes.paths import Home

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("checks")
    node = start_devnet(Home(root=root / "chain"), free_port())
    try:
        play(node.url, 2)
        with running_backend(root / "backend", chain=node.url) as (url, _):
            wait_indexed(url)
            yield url
    finally:
        node.stop()


def wait_indexed(url: str, timeout_s: float = 180) -> None:
    """Until the index holds both disputes resolved and a rejected and an approved merge."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            disputes = httpx.get(f"{url}/api/disputes", timeout=5).json().get("items", [])
            proposals = httpx.get(f"{url}/api/proposals", timeout=5).json().get("items", [])
        except (httpx.HTTPError, ValueError) as exc:
            seen = exc
        else:
            seen = (disputes, proposals)
            statuses = {p["status"] for p in proposals}
            if [d["status"] for d in disputes] == ["resolved"] * 2 and {
                "approved",
                "rejected",
            } <= statuses:
                return
        time.sleep(0.5)
    raise AssertionError(f"the explorer did not index the scenario's checks: {seen}")


def short(address: str) -> str:
    """An address as the dashboard shows it in tables."""
    return f"{address[:10]}…{address[-6:]}"


def rows(page: Any, caption: str) -> list[list[str]]:
    """The cells of the table captioned `caption`, once it has rows."""
    try:
        return _rows(page, caption)
    except AssertionError as exc:
        text = page.evaluate("() => document.querySelector('#main')?.innerText")
        raise AssertionError(f"no rows in table {caption!r}; the page says: {text}") from exc


def _rows(page: Any, caption: str) -> list[list[str]]:
    found: list[list[str]] = wait_until(
        page,
        """caption => {
            const t = [...document.querySelectorAll('#main table')]
              .find(t => t.querySelector('caption')?.textContent === caption);
            const body = t ? [...t.querySelectorAll('tbody tr')] : [];
            return body.length ? body.map(r => [...r.cells].map(c => c.textContent.trim())) : null;
        }""",
        arg=caption,
        timeout_s=60,
    )
    return found


def test_network_page_shows_merges_and_disputes(browser: Any, backend: str) -> None:
    page = browser.new_page()
    errors = PageErrors(page)
    try:
        page.goto(f"{backend}/#/network")
        merges = rows(page, "Merge proposals")
        disputes = rows(page, "Disputes")
    finally:
        page.close()
    assert errors.errors == []
    # newest first: the first round's wrong merge was rejected (stake burned), then approved
    status = [r[5] for r in merges]
    assert "rejected" in status and "approved" in status
    rejected = merges[status.index("rejected")]
    assert rejected[6] == "10" and " reject of " in rejected[4]
    assert len(disputes) == 2 and {d[6] for d in disputes} == {"resolved"}
    # the columns hold short addresses that link to the address page
    assert {d[2] for d in disputes} >= {short(CHEAT.address)}


def test_address_page_shows_stake_slashes_disputes_and_penalties(
    browser: Any, backend: str
) -> None:
    def tables(address: str, *captions: str) -> tuple[str, list[list[list[str]]]]:
        page = browser.new_page()  # a fresh page: no table of the last address lingers
        errors = PageErrors(page)
        try:
            page.goto(f"{backend}/#/address/{address}")
            found = [rows(page, caption) for caption in captions]
            heading = str(page.evaluate("() => document.querySelector('#main h1').textContent"))
        finally:
            page.close()
        assert errors.errors == []
        return heading, found

    _, (penalties, history, v3_disputes) = tables(
        V3.address, "Penalties", "Unbonding history", "Disputes"
    )
    heading, (cheat_slashes,) = tables(CHEAT.address, "Slashes")
    assert heading == "Miner"
    heading, (proposed, proposer_history) = tables(
        PROPOSER.address, "Merge proposals", "Unbonding history"
    )
    assert {p[2].split(" ")[0] for p in penalties} == {"disagreed", "missed"}
    (unbonded,) = history
    assert unbonded[0] == "validator" and unbonded[1] == "20" and unbonded[5].startswith("block ")
    # V3 disputed the quorum's verdict on the honest update and won by default
    assert short(V3.address) in {d[7] for d in v3_disputes}
    assert {"rejected", "dispute"} <= {s[2] for s in cheat_slashes}
    # the proposer's wrong merge burned its stake, also what it was unbonding
    assert heading == "Proposer" and "rejected" in {p[5] for p in proposed}
    assert proposer_history[0][2] == "0" and proposer_history[0][5] == "nothing left (slashed)"


@pytest.mark.parametrize("width", sorted(VIEWPORTS))
def test_checks_pages_pass_axe_and_fit(browser: Any, backend: str, width: str) -> None:
    page = browser.new_page(viewport=VIEWPORTS[width])
    errors = PageErrors(page)
    try:
        for route, caption in (("network", "Disputes"), (f"address/{V3.address}", "Penalties")):
            page.goto(f"{backend}/#/{route}")
            rows(page, caption)
            wait_until(page, "() => document.querySelector('#main .loading') === null")
            shoot(page, f"checks-{route.split('/')[0]}-{width}")
            assert run_axe(page) == [], f"{route} at {width}"
            overflow = page.evaluate("() => document.documentElement.scrollWidth")
            assert overflow <= VIEWPORTS[width]["width"], f"{route} scrolls sideways at {width}"
    finally:
        page.close()
    assert errors.errors == []
