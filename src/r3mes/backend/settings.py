"""Backend settings: flags > `R3MES_*` environment > TOML config > defaults.

The CLI builds one `BackendSettings` and hands it to `create_app`; nothing reads the
environment after that. Field docstrings are the documentation of each option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError

DEFAULT_DB_FILE = "backend.db"


class BackendSettings(BaseSettings):
    """Everything `r3mes backend` needs to run; see each field's docstring."""

    model_config = SettingsConfigDict(
        env_prefix="R3MES_", extra="ignore", frozen=True, validate_default=True
    )

    home: Path = Field(default=Path("~/.r3mes"))
    """R3MES home folder: the SQLite database and generated secrets live below it."""

    database_url: str = ""
    """SQLAlchemy async URL (`postgresql+asyncpg://...`); empty: SQLite in `home`."""

    redis_url: str = ""
    """Redis URL for rate limits, key cache and explorer cache; empty: in-process."""

    redis_prefix: str = Field(default="r3mes:", pattern=r"^[A-Za-z0-9:_.-]{1,64}$")
    """Prefix of every Redis key this backend writes (several deployments may share one Redis)."""

    host: str = "127.0.0.1"
    """Interface the HTTP server binds to."""

    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port (0 picks a free one)."""

    chain_rpc: str = "http://127.0.0.1:26657"
    """The ledger's RPC URL (CometBFT-shaped JSON-RPC, REST and websocket)."""

    chain_id: str = "r3mes-devnet"
    """Chain id written into login challenges and checked on login."""

    domain: str = "localhost"
    """Domain named in login challenges (a signature for another domain is refused)."""

    public_url: str = ""
    """URL users reach this service at (shown by `r3mes up`); empty: http://host:port."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (exact matches)."""

    admins: tuple[str, ...] = ()
    """Wallet addresses (`remes1...`) allowed on the admin routes."""

    jwt_secret: str = ""
    """HMAC key for access tokens; empty: generated once into `home/backend/jwt.key` (0600)."""

    key_pepper: str = ""
    """HMAC pepper for API keys; empty: generated once into `home/backend/pepper.key` (0600)."""

    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    """Lifetime of a login's access token (JWT)."""

    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=60)
    """Lifetime of a refresh token (rotated on every use)."""

    challenge_ttl_s: int = Field(default=300, ge=10, le=3600)
    """How long a login challenge may be signed and used."""

    max_keys_per_account: int = Field(default=10, ge=1, le=1000)
    """API keys one account may hold at once."""

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body accepted (413 above it)."""

    hold_ttl_s: int = Field(default=600, ge=5)
    """A credit hold not captured or released by then is released by the sweeper."""

    deposit_address: str = ""
    """Where users send credits on the ledger to top up; empty: the treasury key's address."""

    treasury_key: str = "backend-treasury"
    """Keystore name of the backend's treasury key (receives deposits, pays operators)."""

    migrate_on_start: bool = True
    """Apply Alembic migrations when the service starts."""

    follow_chain: bool = True
    """Follow the ledger (deposits, indexer, node discovery); off only in isolated tests."""

    @field_validator("admins", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Env and flags give one comma-separated string; the config file gives a list."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admins")
    @classmethod
    def _valid_admins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(validate_address(address) for address in value)
        except AddressError as exc:
            raise ValueError(f"admin {exc}") from exc

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def data_dir(self) -> Path:
        """`home/backend`: database file and secrets."""
        return self.home / "backend"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in effect (SQLite in `data_dir` unless one is configured)."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{self.data_dir / DEFAULT_DB_FILE}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste (`postgres://`, `postgresql://`) and pick async drivers."""
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url
