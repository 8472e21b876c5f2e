"""Errors of the useful-work protocol.

Every error here is a `WorkError`; messages say what was wrong and what to do about it.
"""

from __future__ import annotations

from r3mes.errors import R3mesError


class WorkError(R3mesError):
    """Base class of every error raised by `r3mes.work`."""


class TaskError(WorkError):
    """A task is malformed, or its canonical bytes do not decode."""


class DatasetError(WorkError):
    """A token dataset file is malformed, or a shard / split request is impossible."""


class EncodingError(WorkError):
    """An encoded update is malformed, too large, or not in canonical form."""


class CompressionError(WorkError):
    """A compression request is invalid (ratio out of range, shapes that disagree)."""


class TrainingError(WorkError):
    """Training could not run with the given task, model, adapter state and shard."""


class AggregationError(WorkError):
    """Updates cannot be aggregated (no updates, bad weights, keys or shapes disagree)."""
