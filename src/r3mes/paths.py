"""Where R3MES keeps its files on disk.

One `Home` object is built at the edge (CLI, `r3mes up`) from `--home` / `$R3MES_HOME` and
passed down; library code never reads the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.r3mes")


@dataclass(frozen=True)
class Home:
    """The R3MES home directory and its standard layout."""

    root: Path
    """Base folder; everything R3MES writes lives below it."""

    @classmethod
    def from_env(cls, override: str | Path | None, *, environ: Mapping[str, str]) -> Home:
        """`override` (a flag) wins, then `R3MES_HOME` in `environ`, then `~/.r3mes`. The
        CLI passes `os.environ`; nothing below it reads the process environment."""
        raw = override if override is not None else environ.get("R3MES_HOME")
        root = Path(raw) if raw else DEFAULT_HOME
        return cls(root=root.expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def blocks(self) -> Path:
        return self.root / "blocks"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def chain(self) -> Path:
        return self.root / "chain"
