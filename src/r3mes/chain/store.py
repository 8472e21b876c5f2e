"""Persistent block, tx-result and state store on SQLite (WAL).

The state lives in `entries` (one row per state entry, the leaves of the app-hash tree)
and `head` (the committed height and app hash). Each block is committed in one SQLite
transaction with its tx results and only the entries it changed, so a crash at any moment
leaves either the whole block or none of it, and a commit costs what the block changed,
not the size of the state. On open, the entries' app hash is recomputed and checked
against `head` and the last block's recorded one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r3mes.chain.errors import StoreError
from r3mes.chain.genesis import Genesis
from r3mes.chain.ledger import Event
from r3mes.chain.rpc_query import Condition
from r3mes.chain.state import State, genesis_state, state_from_entries
from r3mes.chain.transition import Block, BlockResult, Header, TxResult, apply_block

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, header TEXT NOT NULL,
  app_hash TEXT NOT NULL, num_txs INTEGER NOT NULL, begin_events TEXT NOT NULL,
  end_events TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
  height INTEGER NOT NULL, idx INTEGER NOT NULL, hash TEXT NOT NULL, raw BLOB NOT NULL,
  code INTEGER NOT NULL, log TEXT NOT NULL, events TEXT NOT NULL, signer TEXT NOT NULL,
  PRIMARY KEY (height, idx));
CREATE INDEX IF NOT EXISTS txs_hash ON txs(hash);
CREATE INDEX IF NOT EXISTS txs_signer ON txs(signer);
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS head (
  id INTEGER PRIMARY KEY CHECK (id = 1), height INTEGER NOT NULL, app_hash TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredTx:
    """A committed transaction and its result, as /tx returns it."""

    hash: str
    height: int
    index: int
    raw: bytes
    code: int
    log: str
    events: list[dict[str, Any]]
    signer: str


def _events(events: tuple[Event, ...]) -> str:
    return json.dumps([e.to_json() for e in events], sort_keys=True)


class BlockStore:
    """SQLite store of one chain. Thread-safe: one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        legacy = self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state'")
        if legacy is not None:
            self._db.close()
            raise StoreError(
                f"{path} was written by an older r3mes (whole-state snapshots); its app "
                "hashes cannot be carried over. Reset the devnet with "
                "`r3mes devnet init --overwrite`"
            )
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- genesis and state ------------------------------------------------------------

    def genesis(self) -> Genesis:
        row = self._one("SELECT value FROM meta WHERE key = 'genesis'")
        if row is None:
            raise StoreError(f"{self.path} holds no chain; run `r3mes devnet init` first")
        return Genesis.from_json(row[0])

    def init_genesis(self, genesis: Genesis) -> State:
        """Record the genesis document (once) and return the height-0 state."""
        with self._lock:
            existing = self._one("SELECT value FROM meta WHERE key = 'genesis'")
            if existing is not None:
                if Genesis.from_json(existing[0]) != genesis:
                    raise StoreError(f"{self.path} already holds a different chain")
                return self.load_state()
            state = genesis_state(genesis)
            with self._tx():
                self._db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis.to_json(),))
                self._db.execute("DELETE FROM entries")
                self._db.executemany("INSERT INTO entries VALUES (?, ?)", state.entries())
                self._set_head(state.height, state.app_hash())
            return state

    def load_state(self) -> State:
        """The latest committed state, checked against its app hash and the last block's."""
        head = self._one("SELECT height, app_hash FROM head WHERE id = 1")
        if head is None:
            return self.init_genesis(self.genesis())
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM entries").fetchall()
        state = state_from_entries((str(k), bytes(v)) for k, v in rows)
        if state.app_hash() != head[1] or state.height != head[0]:
            raise StoreError("stored state does not match its app hash; the store is corrupt")
        last = self._one("SELECT app_hash FROM blocks WHERE height = ?", (state.height,))
        if state.height and (last is None or last[0] != head[1]):
            raise StoreError("stored state does not match the last block; the store is corrupt")
        return state

    def _set_head(self, height: int, app_hash: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO head VALUES (1, ?, ?)", (height, app_hash))

    # -- blocks -----------------------------------------------------------------------

    def commit(self, block: Block, result: BlockResult, state: State) -> None:
        """Atomically persist `block`, its results, and the entries the block changed.

        `state` is what `apply_block` returned for `block` on top of the stored state; its
        `delta` is written, so the cost follows the block's changes, not the state size.
        """
        h = block.header
        if state.height != h.height:
            raise StoreError("commit: state and block heights disagree")
        if state.app_hash() != result.app_hash:
            raise StoreError("commit: state does not match the block result's app hash")
        delta = state.delta
        with self._lock, self._tx():
            head = self._db.execute("SELECT height FROM head WHERE id = 1").fetchone()
            if head is None or head[0] != h.height - 1:
                raise StoreError(f"commit: block {h.height} does not follow the stored state")
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    h.height,
                    block.hash,
                    json.dumps(asdict(h), sort_keys=True),
                    result.app_hash,
                    len(block.txs),
                    _events(result.begin_events),
                    _events(result.end_events),
                ),
            )
            self._db.executemany(
                "INSERT INTO txs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (h.height, i, r.hash, raw, r.code, r.log, _events(r.events), r.signer)
                    for i, (raw, r) in enumerate(zip(block.txs, result.tx_results, strict=True))
                ],
            )
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?)", delta.items())
            self._set_head(h.height, result.app_hash)

    def height(self) -> int:
        row = self._one("SELECT MAX(height) FROM blocks")
        return int(row[0]) if row and row[0] is not None else 0

    def block(self, height: int) -> tuple[Block, str] | None:
        """The block at `height` and the app hash after it, or None."""
        row = self._one("SELECT header, app_hash FROM blocks WHERE height = ?", (height,))
        if row is None:
            return None
        header = Header(**json.loads(row[0]))
        with self._lock:
            raws = self._db.execute(
                "SELECT raw FROM txs WHERE height = ? ORDER BY idx", (height,)
            ).fetchall()
        return Block(header=header, txs=tuple(bytes(r[0]) for r in raws)), str(row[1])

    def block_height(self, block_hash: str) -> int | None:
        """The height of the block with this hash (hex, any case), or None."""
        row = self._one("SELECT height FROM blocks WHERE hash = ?", (block_hash.lower(),))
        return int(row[0]) if row else None

    def block_results(self, height: int) -> dict[str, Any] | None:
        row = self._one(
            "SELECT app_hash, begin_events, end_events FROM blocks WHERE height = ?", (height,)
        )
        if row is None:
            return None
        txs = self._txs("WHERE height = ? ORDER BY idx", (height,))
        return {
            "height": height,
            "app_hash": row[0],
            "begin_events": json.loads(row[1]),
            "end_events": json.loads(row[2]),
            "txs_results": [{"code": t.code, "log": t.log, "events": t.events} for t in txs],
        }

    def tx(self, tx_hash: str) -> StoredTx | None:
        """The latest committed tx with this hash (a successful one preferred)."""
        found = self._txs(
            "WHERE hash = ? ORDER BY code != 0, height DESC LIMIT 1", (tx_hash.upper(),)
        )
        return found[0] if found else None

    def search_txs(
        self,
        conditions: Sequence[Condition],
        *,
        limit: int,
        offset: int = 0,
        descending: bool = False,
    ) -> tuple[list[StoredTx], int]:
        """One page of the txs matching every condition of a CometBFT query (see
        rpc_query), in (height, index) order, and how many match in all. `tx.height` and
        `tx.hash` are the txs' own keys; any other tag is an indexed event attribute."""
        where, args = _where(conditions, _TX_KEYS, ("txs.events",), _TX_HINTS)
        order = "height DESC, idx DESC" if descending else "height, idx"
        with self._lock:
            total = int(self._db.execute(f"SELECT COUNT(*) FROM txs {where}", args).fetchone()[0])
            page = self._txs(f"{where} ORDER BY {order} LIMIT ? OFFSET ?", (*args, limit, offset))
        return page, total

    def search_blocks(
        self,
        conditions: Sequence[Condition],
        *,
        limit: int,
        offset: int = 0,
        descending: bool = True,
    ) -> tuple[list[int], int]:
        """Heights of one page of the blocks matching every condition (`block.height`,
        or an attribute of the block's begin/end events), and how many match in all."""
        where, args = _where(conditions, _BLOCK_KEYS, ("blocks.begin_events", "blocks.end_events"))
        order = "DESC" if descending else "ASC"
        with self._lock:
            total = int(
                self._db.execute(f"SELECT COUNT(*) FROM blocks {where}", args).fetchone()[0]
            )
            rows = self._db.execute(
                f"SELECT height FROM blocks {where} ORDER BY height {order} LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [int(r[0]) for r in rows], total

    def replay(self) -> Iterator[tuple[int, str, str]]:
        """Re-apply every stored block from genesis: yields (height, stored, recomputed)."""
        state = genesis_state(self.genesis())
        for height in range(1, self.height() + 1):
            found = self.block(height)
            if found is None:
                raise StoreError(f"block {height} is missing from the store")
            block, stored_hash = found
            state, result = apply_block(state, block)
            yield height, stored_hash, result.app_hash

    # -- plumbing ---------------------------------------------------------------------

    def _txs(self, where: str, args: tuple[Any, ...]) -> list[StoredTx]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT hash, height, idx, raw, code, log, events, signer FROM txs {where}", args
            ).fetchall()
        return [
            StoredTx(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], json.loads(r[6]), r[7])
            for r in rows
        ]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def tx_result_json(result: TxResult) -> dict[str, Any]:
    return {"code": result.code, "log": result.log, "events": [e.to_json() for e in result.events]}


_TX_KEYS = {"tx.height": "height", "tx.hash": "hash"}
_TX_HINTS = {"message.sender": "signer"}
"""Indexed columns that hold an attribute's value: every tx's `message` event names its
signer as `sender` (transition.deliver_tx), so `message.sender='X'` also filters on the
signer index first; the event condition itself still decides."""
_BLOCK_KEYS = {"block.height": "height"}
_SQL_OPS = {"=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_ATTRIBUTE = (
    "EXISTS (SELECT 1 FROM json_each(e.value, '$.attributes') AS a"
    " WHERE json_extract(e.value, '$.type') || '.' || json_extract(a.value, '$.key') = ?"
    " AND json_extract(a.value, '$.index') AND {test})"
)
_VALUE = "json_extract(a.value, '$.value')"


def _where(
    conditions: Sequence[Condition],
    keys: dict[str, str],
    event_columns: tuple[str, ...],
    hints: dict[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """SQL WHERE of a parsed query: `keys` maps the indexed tags to columns (integer
    heights, upper-case hex hashes); the other tags are event attributes (type.key) in the
    JSON `event_columns`, and, as CometBFT v0.38's indexer matches them, one event must
    satisfy all of them (`message.sender='a' AND transfer.amount=1` matches nothing: the
    two are attributes of different events). Operands were checked by the caller."""
    clauses: list[str] = []
    args: list[Any] = []
    tests: list[str] = []
    test_args: list[Any] = []
    for c in conditions:
        column = keys.get(c.tag)
        if column is not None and c.op == "EXISTS":
            continue  # every tx has a height and a hash, every block a height
        if column == "hash":
            clauses.append("hash = ?")
            args.append(str(c.operand).upper())
        elif column is not None:
            clauses.append(f"{column} {_SQL_OPS[c.op]} ?")
            args.append(c.operand)
        else:
            if c.op == "EXISTS":
                test, extra = "1", []
            elif c.op == "CONTAINS":
                test, extra = f"instr({_VALUE}, ?) > 0", [c.operand]
            elif isinstance(c.operand, str):
                test, extra = f"{_VALUE} = ?", [c.operand]
                if hints and c.op == "=" and c.tag in hints:
                    clauses.append(f"{hints[c.tag]} = ?")
                    args.append(c.operand)
            else:  # a number: the attribute must be an integer written canonically
                test = (
                    f"CAST(CAST({_VALUE} AS INTEGER) AS TEXT) = {_VALUE}"
                    f" AND CAST({_VALUE} AS INTEGER) {_SQL_OPS[c.op]} ?"
                )
                extra = [c.operand]
            tests.append(_ATTRIBUTE.format(test=test))
            test_args.extend([c.tag, *extra])
    if tests:
        one_event = " AND ".join(tests)
        parts = [
            f"EXISTS (SELECT 1 FROM json_each({col}) AS e WHERE {one_event})"
            for col in event_columns
        ]
        clauses.append("(" + " OR ".join(parts) + ")")
        for _ in event_columns:
            args.extend(test_args)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
