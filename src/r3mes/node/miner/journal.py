"""The miner's transaction journal: one durable row per mining transaction.

Every state change is committed to SQLite (WAL, `synchronous=FULL`) *before* the step it
announces starts, so a miner killed at any point finds on restart exactly how far each
transaction got and can finish or roll it back. Rows are never deleted by the miner; they
are the audit trail behind `/stats` and `/transaction/{id}`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from r3mes.node.errors import ValidationError


class TxState(StrEnum):
    """Where a mining transaction stands; the order of the happy path matters."""

    PENDING = "PENDING"
    TRAINING = "TRAINING"
    IPFS_UPLOAD = "IPFS_UPLOAD"
    BLOCKCHAIN_SUBMIT = "BLOCKCHAIN_SUBMIT"
    TASK_COMPLETE = "TASK_COMPLETE"
    COMMITTED = "COMMITTED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def terminal(self) -> bool:
        return self in (TxState.COMMITTED, TxState.FAILED, TxState.ROLLED_BACK)


_HAPPY_PATH = (
    TxState.PENDING,
    TxState.TRAINING,
    TxState.IPFS_UPLOAD,
    TxState.BLOCKCHAIN_SUBMIT,
    TxState.TASK_COMPLETE,
    TxState.COMMITTED,
)


def transition_allowed(current: TxState, target: TxState) -> bool:
    """The journal's state machine: forward one step, or out to FAILED / ROLLED_BACK."""
    if current.terminal:
        return False
    if target in (TxState.FAILED, TxState.ROLLED_BACK):
        return True
    return _HAPPY_PATH.index(target) == _HAPPY_PATH.index(current) + 1


@dataclass(frozen=True)
class TxRecord:
    """One mining transaction as persisted."""

    tx_id: str
    round_id: int
    task: dict[str, Any]
    state: TxState
    cid: str | None
    digest: str | None
    chain_tx: str | None
    error: str | None
    error_kind: str | None
    attempts: int
    created_at: float
    updated_at: float
    cid_preexisting: bool = False
    """The update's CID was already pinned before this transaction stored it, so a
    rollback (even one after a restart) must leave that pin alone."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        out["latency_s"] = round(self.updated_at - self.created_at, 6)
        return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    tx_id TEXT PRIMARY KEY,
    round_id INTEGER NOT NULL,
    task_json TEXT NOT NULL,
    state TEXT NOT NULL,
    cid TEXT,
    digest TEXT,
    chain_tx TEXT,
    error TEXT,
    error_kind TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    cid_preexisting INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transactions_state ON transactions(state);
CREATE INDEX IF NOT EXISTS transactions_round ON transactions(round_id);
"""

_COLUMNS = (
    "tx_id, round_id, task_json, state, cid, digest, chain_tx, error, error_kind, "
    "attempts, created_at, updated_at, cid_preexisting"
)
_UPDATABLE = frozenset(
    {"cid", "digest", "chain_tx", "error", "error_kind", "attempts", "cid_preexisting"}
)
_MAX_TASK_BYTES = 64 * 1024


class Journal:
    """SQLite-backed, thread-safe store of `TxRecord`s."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(transactions)")}
        if "cid_preexisting" not in columns:  # a journal written before the column existed
            self._db.execute(
                "ALTER TABLE transactions ADD COLUMN cid_preexisting INTEGER NOT NULL DEFAULT 0"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def begin(self, *, tx_id: str, round_id: int, task: dict[str, Any]) -> TxRecord:
        """Record a new transaction in PENDING; refuses a duplicate id."""
        task_json = json.dumps(task, sort_keys=True, separators=(",", ":"))
        if len(task_json) > _MAX_TASK_BYTES:
            raise ValidationError(f"task description too large ({len(task_json)} bytes)")
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO transactions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (tx_id, round_id, task_json, TxState.PENDING.value, None, None, None)
                    + (None, None, 0, now, now, 0),
                )
            except sqlite3.IntegrityError as exc:
                raise ValidationError(f"transaction {tx_id} already exists") from exc
        record = self.get(tx_id)
        assert record is not None
        return record

    def advance(self, tx_id: str, state: TxState, **fields: Any) -> TxRecord:
        """Move `tx_id` to `state` (checked) and update the given columns, atomically."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValidationError(f"unknown journal fields: {sorted(unknown)}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT state FROM transactions WHERE tx_id = ?", (tx_id,)
                ).fetchone()
                if row is None:
                    raise ValidationError(f"unknown transaction {tx_id}")
                current = TxState(row[0])
                if not transition_allowed(current, state):
                    raise ValidationError(
                        f"transaction {tx_id}: illegal transition {current} -> {state}"
                    )
                sets = ", ".join(f"{k} = ?" for k in fields)
                sql = "UPDATE transactions SET state = ?, updated_at = ?"
                sql += f", {sets}" if sets else ""
                self._db.execute(
                    sql + " WHERE tx_id = ?",
                    (state.value, time.time(), *fields.values(), tx_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get(tx_id)
        assert record is not None
        return record

    def get(self, tx_id: str) -> TxRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM transactions WHERE tx_id = ?", (tx_id,)
            ).fetchone()
        return _record(row) if row else None

    def unresolved(self) -> list[TxRecord]:
        """Transactions not yet COMMITTED / FAILED / ROLLED_BACK, oldest first."""
        placeholders = ",".join("?" for s in TxState if s.terminal)
        terminal = [s.value for s in TxState if s.terminal]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM transactions WHERE state NOT IN ({placeholders}) "
                "ORDER BY created_at",
                terminal,
            ).fetchall()
        return [_record(r) for r in rows]

    def recent(self, limit: int = 50) -> list[TxRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM transactions ORDER BY created_at DESC LIMIT ?",
                (max(1, min(limit, 1000)),),
            ).fetchall()
        return [_record(r) for r in rows]

    def for_round(self, round_id: int) -> list[TxRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM transactions WHERE round_id = ? ORDER BY created_at",
                (round_id,),
            ).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of transactions per state (every state present, zero if none)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM transactions GROUP BY state"
            ).fetchall()
        out = {s.value: 0 for s in TxState}
        out.update({str(state): int(n) for state, n in rows})
        return out

    def mean_latency(self, state: TxState = TxState.COMMITTED) -> float | None:
        """Mean seconds from begin to the final update, over transactions in `state`."""
        with self._lock:
            row = self._db.execute(
                "SELECT AVG(updated_at - created_at) FROM transactions WHERE state = ?",
                (state.value,),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])


def _record(row: tuple[Any, ...]) -> TxRecord:
    return TxRecord(
        tx_id=row[0],
        round_id=int(row[1]),
        task=json.loads(row[2]),
        state=TxState(row[3]),
        cid=row[4],
        digest=row[5],
        chain_tx=row[6],
        error=row[7],
        error_kind=row[8],
        attempts=int(row[9]),
        created_at=float(row[10]),
        updated_at=float(row[11]),
        cid_preexisting=bool(row[12]),
    )
