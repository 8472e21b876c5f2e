"""The miner's error-feedback residual, kept on disk across rounds.

Top-k compression drops most of each update; error feedback adds what was dropped to the
next round's update, so nothing is lost for good. That residual must survive restarts and
must only move forward when a submission is *committed*: a rolled-back round leaves the
previous residual untouched. Hence two files: the current residual and, while a mining
transaction is in flight, a staged one named after the transaction, promoted by an atomic
rename on commit.

Files are safetensors (never pickle), written to a temporary file, fsync'd and renamed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from r3mes.node.errors import ResourceError, ValidationError

logger = logging.getLogger(__name__)

MAX_RESIDUAL_BYTES = 512 * 1024 * 1024
_TX_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


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

    def stage(self, tx_id: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the residual that becomes current if transaction `tx_id` commits."""
        save_tensors_atomic(self.staged_path(tx_id), tensors, metadata={"tx_id": tx_id})

    def has_staged(self, tx_id: str) -> bool:
        return self.staged_path(tx_id).exists()

    def promote(self, tx_id: str) -> bool:
        """Make the staged residual of `tx_id` current; False when nothing was staged."""
        staged = self.staged_path(tx_id)
        if not staged.exists():
            return False
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
