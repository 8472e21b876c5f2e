"""The miner's error-feedback residual, kept on disk across rounds.

Top-k compression drops most of each update; error feedback adds what was dropped to the
next round's update, so nothing is lost for good. That residual must survive restarts and
must only move forward when a submission is *committed*: a rolled-back round leaves the
previous residual untouched. Hence two files: the current residual and, while a mining
transaction is in flight, a staged one named after the transaction, promoted by an atomic
rename on commit.

Files are safetensors (never pickle), written to a temporary file, fsync'd and renamed.

The residual is also committed on the ledger: each submission carries the CID and digest of
its residual after the round (`encode_residual`, canonical safetensors) and names the
verified submission whose residual it started from. The promoted file records that
submission's id (`submission_id` metadata), so the miner always starts from a residual the
ledger can point at and every validator replays from the same bytes (`fetch_residual`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from r3mes.node.errors import ResourceError, ValidationError

if TYPE_CHECKING:
    from r3mes.node.artifacts import BlobStore

logger = logging.getLogger(__name__)

MAX_RESIDUAL_BYTES = 512 * 1024 * 1024
_TX_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
RESIDUAL_FORMAT = "r3mes-residual-v1"
BASE_KEY = "submission_id"


def encode_residual(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The canonical bytes of a residual (float32, sorted names): what the ledger commits."""
    from r3mes.work.canonical import dump_canonical

    dense = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    return dump_canonical(dense, {"format": RESIDUAL_FORMAT})


def residual_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_residual(data: bytes) -> dict[str, torch.Tensor]:
    """Strictly parse `encode_residual` bytes; ValidationError on anything else."""
    from r3mes.work.canonical import load_canonical
    from r3mes.work.errors import EncodingError

    try:
        tensors, metadata = load_canonical(data, max_bytes=MAX_RESIDUAL_BYTES)
    except EncodingError as exc:
        raise ValidationError(f"committed residual is malformed: {exc}") from exc
    if metadata != {"format": RESIDUAL_FORMAT}:
        raise ValidationError("committed residual has the wrong format tag")
    if any(t.dtype != torch.float32 for t in tensors.values()):
        raise ValidationError("committed residual tensors must be float32")
    return dict(tensors)


def fetch_residual(store: BlobStore, *, cid: str, digest: str) -> dict[str, torch.Tensor]:
    """The residual a submission committed, fetched by CID and checked against its digest.

    Raises ValidationError when the bytes can never be a valid residual (wrong digest,
    malformed) and lets storage errors through (a later attempt may succeed)."""
    data = store.get_bytes(cid, max_size=MAX_RESIDUAL_BYTES)
    if residual_digest(data) != digest:
        raise ValidationError(f"residual {cid} does not match its committed digest")
    return decode_residual(data)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors_atomic(
    path: Path, tensors: dict[str, torch.Tensor], *, metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` to `path` so that readers see either the old or the new file."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValidationError(f"residual tensor {name!r} must be floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise ValidationError(f"residual tensor {name!r} holds NaN or infinity")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(tmp), metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResourceError(f"could not write {path}: {exc}") from exc


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors_atomic`, with a size limit."""
    size = path.stat().st_size
    if size > MAX_RESIDUAL_BYTES:
        raise ResourceError(f"{path} is {size} bytes, over the {MAX_RESIDUAL_BYTES} limit")
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError) as exc:
        raise ValidationError(f"{path} is not a readable safetensors file: {exc}") from exc


class ResidualStore:
    """Current residual plus per-transaction staged residuals in one folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def current_path(self) -> Path:
        return self.directory / "residual.safetensors"

    def staged_path(self, tx_id: str) -> Path:
        if not _TX_ID.match(tx_id):
            raise ValidationError(f"invalid transaction id {tx_id!r}")
        return self.directory / f"residual.staged-{tx_id}.safetensors"

    def load(self) -> dict[str, torch.Tensor]:
        """The committed residual; empty when none was ever committed."""
        if not self.current_path.exists():
            return {}
        return load_tensors(self.current_path)

    def load_base(self) -> tuple[dict[str, torch.Tensor], int]:
        """(current residual, id of the ledger submission that committed it).

        A residual promoted without a submission id (none on the ledger to point at) is not
        used: the miner starts from zeros, as every validator will replay it."""
        if not self.current_path.exists():
            return {}, 0
        from safetensors import safe_open

        try:
            with safe_open(str(self.current_path), framework="pt") as handle:
                meta = handle.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ValidationError(f"{self.current_path} is not readable: {exc}") from exc
        base = meta.get(BASE_KEY, "")
        if not base.isdigit() or int(base) < 1:
            return {}, 0
        return self.load(), int(base)

    def stage(self, tx_id: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the residual that becomes current if transaction `tx_id` commits."""
        save_tensors_atomic(self.staged_path(tx_id), tensors, metadata={"tx_id": tx_id})

    def has_staged(self, tx_id: str) -> bool:
        return self.staged_path(tx_id).exists()

    def promote(self, tx_id: str, *, submission_id: int = 0) -> bool:
        """Make the staged residual of `tx_id` current; False when nothing was staged.

        `submission_id` is the ledger submission that committed it (recorded in the file,
        written atomically before the rename, so `load_base` never pairs it with other
        bytes)."""
        staged = self.staged_path(tx_id)
        if not staged.exists():
            return False
        if submission_id:
            meta = {"tx_id": tx_id, BASE_KEY: str(submission_id)}
            save_tensors_atomic(staged, load_tensors(staged), metadata=meta)
        os.replace(staged, self.current_path)
        _fsync_dir(self.directory)
        logger.info("residual of %s promoted", tx_id)
        return True

    def discard(self, tx_id: str) -> None:
        """Forget the staged residual of `tx_id` (rolled back); the current one stays."""
        self.staged_path(tx_id).unlink(missing_ok=True)

    def reset(self) -> None:
        """Drop the committed residual (e.g. when the adapter being trained changes)."""
        self.current_path.unlink(missing_ok=True)
