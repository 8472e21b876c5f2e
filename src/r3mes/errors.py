"""The root of R3MES's error hierarchy.

Each concern (model, work, storage, chain, ...) defines its own small hierarchy below
`R3mesError`; the CLI catches `R3mesError` and prints its message, which says what happened
and what to do.
"""


class R3mesError(Exception):
    """Base class of every error R3MES raises on purpose."""
