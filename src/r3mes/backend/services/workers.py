"""The background workers a running backend starts (sweeper, chain follower, indexer, ...).

Each concern adds its own entry; `create_app`'s lifespan spawns them all on the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from r3mes.backend.runtime import Runtime

log = logging.getLogger(__name__)

Worker = tuple[str, Callable[[], Awaitable[None]]]


def workers(runtime: Runtime) -> list[Worker]:
    """(name, coroutine factory) for every worker this configuration runs."""
    found: list[Worker] = []
    _accounts_workers(runtime, found)
    _chat_workers(runtime, found)
    _explorer_workers(runtime, found)
    # Chain handlers register on `chain_follower(runtime)` above this line; it runs last.
    if runtime.settings.follow_chain:
        from r3mes.backend.services.chain_follower import chain_follower

        found.append(("chain-follower", chain_follower(runtime).run))
    return found


def _accounts_workers(runtime: Runtime, found: list[Worker]) -> None:
    """Hold expiry, and (when following the chain) the follower with the deposits handler."""
    from r3mes.backend.services import credits, deposits
    from r3mes.backend.services.chain_follower import chain_follower

    interval = credits.sweep_interval(runtime.settings.hold_ttl_s)
    found.append(("hold-sweeper", lambda: credits.sweep_forever(runtime.db, interval_s=interval)))
    if not runtime.settings.follow_chain:
        return
    follower = chain_follower(runtime)
    address = deposits.deposit_address(runtime.settings)
    if address is not None:
        follower.register(deposits.HANDLER_NAME, deposits.handler(address))
    else:
        log.warning(
            "no deposit address (set R3MES_DEPOSIT_ADDRESS or create the treasury key); "
            "ledger deposits are not credited"
        )


def _explorer_workers(runtime: Runtime, found: list[Worker]) -> None:
    """The chat rollup for analytics; when following the chain, the indexer (a chain handler,
    websocket pushes after each commit) and the poller of adapter versions' held-out loss."""
    from r3mes.backend.services.chat_rollup import ChatRoller

    found.append(("chat-rollup", ChatRoller(runtime.db).run))
    if not runtime.settings.follow_chain:
        return
    from r3mes.backend.services.chain_follower import chain_follower
    from r3mes.backend.services.live import HANDLER_NAME, explorer_service

    explorer = explorer_service(runtime)
    follower = chain_follower(runtime)
    follower.register(HANDLER_NAME, explorer.handle)
    follower.add_listener(explorer.on_block)
    found.append(("adapter-loss-poller", explorer.poll_losses_forever))


def _chat_workers(runtime: Runtime, found: list[Worker]) -> None:
    """Serving-node discovery and probes; operator payouts when the treasury key unlocks."""
    from r3mes.backend.services.chat_setup import chat_workers

    found.extend(chat_workers(runtime))
