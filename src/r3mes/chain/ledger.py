"""Small state helpers shared by the message handlers: accounts, mint, burn, events."""

from __future__ import annotations

from dataclasses import dataclass, replace

from r3mes.chain.codes import Code
from r3mes.chain.errors import TxInvalid
from r3mes.chain.state import Account, State, WorkingState


@dataclass(frozen=True)
class Event:
    """An ABCI event: a type and ordered string attributes (indexed for tx_search)."""

    type: str
    attributes: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "attributes": [{"key": k, "value": v, "index": True} for k, v in self.attributes],
        }


def event(kind: str, **attrs: object) -> Event:
    return Event(type=kind, attributes=tuple((k, str(v)) for k, v in attrs.items()))


@dataclass(frozen=True)
class BlockContext:
    """What a transition may know about the world: the block's height, time and chain id."""

    chain_id: str
    height: int
    time_ms: int


def invalid(code: Code, log: str) -> TxInvalid:
    return TxInvalid(int(code), log)


def account(state: WorkingState, address: str) -> Account:
    """The account at `address`, creating it (with the next account number) if new."""
    found = state.accounts.get(address)
    if found is not None:
        return found
    created = Account(address=address, number=state.next_account_number)
    state.next_account_number += 1
    state.accounts[address] = created
    return created


def credit(state: WorkingState, address: str, amount: int) -> None:
    acc = account(state, address)
    state.accounts[address] = replace(acc, balance=acc.balance + amount)


def require_funds(state: State | WorkingState, address: str, amount: int) -> Account:
    """The account at `address` if it holds at least `amount` credits; TxInvalid otherwise."""
    acc = state.accounts.get(address)
    balance = acc.balance if acc else 0
    if acc is None or balance < amount:
        raise invalid(Code.INSUFFICIENT_FUNDS, f"{address} has {balance} credits, needs {amount}")
    return acc


def debit(state: WorkingState, address: str, amount: int) -> None:
    acc = require_funds(state, address, amount)
    state.accounts[address] = replace(acc, balance=acc.balance - amount)


def mint_reward(state: WorkingState, address: str, amount: int, reputation: int) -> None:
    """Mint `amount` new credits to `address` as a reward and raise its reputation."""
    credit(state, address, amount)
    acc = state.accounts[address]
    state.accounts[address] = replace(
        acc, earned=acc.earned + amount, reputation=acc.reputation + reputation
    )
    state.supply += amount
    state.minted += amount


def lose_reputation(state: WorkingState, address: str, amount: int) -> None:
    """Lower `address`'s reputation by `amount`, floored at 0."""
    acc = account(state, address)
    state.accounts[address] = replace(acc, reputation=max(0, acc.reputation - amount))


def mint(state: WorkingState, address: str, amount: int) -> None:
    credit(state, address, amount)
    state.supply += amount
    state.minted += amount


def burn_stake(state: WorkingState, node_key: str, amount: int) -> int:
    """Burn up to `amount` of a node's stake, then of the same role's stake still unbonding
    (newest first); returns what was burned."""
    node = state.nodes[node_key]
    burned = min(node.stake, amount)
    state.nodes[node_key] = replace(node, stake=node.stake - burned)
    pending = state.unbonding.get(node.address)
    if burned < amount and pending is not None:
        entries = list(pending.entries)
        for i in reversed(range(len(entries))):
            entry = entries[i]
            if entry.role != node.role or burned >= amount:
                continue
            take = min(entry.amount, amount - burned)
            burned += take
            entries[i] = replace(entry, amount=entry.amount - take)
        kept = tuple(e for e in entries if e.amount)
        state.unbonding[node.address] = replace(pending, entries=kept)
    state.supply -= burned
    state.burned += burned
    return burned
