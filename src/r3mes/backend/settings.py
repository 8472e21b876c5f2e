"""Backend settings: flags > `R3MES_*` environment > TOML config > defaults.

The CLI builds one `BackendSettings` and hands it to `create_app`; nothing reads the
environment after that. Field docstrings are the documentation of each option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError

DEFAULT_DB_FILE = "backend.db"


class ChatPrice(BaseModel):
    """Credits charged per 1,000 prompt tokens and per 1,000 completion tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_per_1k: int = Field(default=10, ge=0, le=10**12)
    completion_per_1k: int = Field(default=20, ge=0, le=10**12)


class RateTier(BaseModel):
    """Token-bucket sizes: requests and tokens (prompt + max_tokens) per minute."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_min: int = Field(default=600, ge=1, le=10**9)
    tokens_per_min: int = Field(default=1_000_000, ge=1, le=10**12)


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

    chain_id: str = "r3mes-devnet-1"
    """Chain id written into login challenges and checked on login."""

    domain: str = "localhost"
    """Domain named in login challenges (a signature for another domain is refused)."""

    public_url: str = ""
    """URL users reach this service at (shown by `r3mes up`); empty: http://host:port."""

    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Origins allowed to call the API from a browser (exact matches)."""

    admins: Annotated[tuple[str, ...], NoDecode] = ()
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

    challenges_per_min: int = Field(default=30, ge=1, le=100_000)
    """Login challenges one client address may ask for per minute (429 beyond)."""

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

    # -- paid chat (gateway) -----------------------------------------------------------

    chat_prices: dict[str, ChatPrice] = Field(default_factory=dict)
    """Price per model name (`r3mes-adapter`, the base model's id, `auto`); JSON in the env."""

    chat_default_price: ChatPrice = ChatPrice()
    """Price of a model not listed in `chat_prices`."""

    chat_default_max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    """Completion tokens asked of the node when a request names no `max_tokens`."""

    chat_max_tokens_cap: int = Field(default=4096, ge=1, le=1_000_000)
    """Largest `max_tokens` forwarded (and held for); larger requests are clamped to it."""

    chat_upstream_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """Longest a serving node may take to finish one request."""

    chat_first_byte_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Longest a serving node may take to start answering before another is tried."""

    chat_attempts: int = Field(default=3, ge=1, le=10)
    """Nodes tried for one request when they fail before their first byte."""

    rate_tiers: dict[str, RateTier] = Field(default_factory=lambda: {"default": RateTier()})
    """Rate limits per account tier (the tier named `default` covers unknown tiers)."""

    ip_rate: RateTier = RateTier(requests_per_min=1200, tokens_per_min=2_000_000)
    """Rate limits per client IP address (on top of the key's)."""

    serving_endpoints: Annotated[tuple[str, ...], NoDecode] = ()
    """Serving nodes not on the ledger (`URL` or `remes1...=URL`), added to the ledger's."""

    node_capacity_default: int = Field(default=8, ge=1, le=100_000)
    """Capacity assumed for a node that announced none (static endpoints)."""

    node_failures_to_trip: int = Field(default=3, ge=1, le=1000)
    """Consecutive failures that put a node in cool-down (circuit open)."""

    node_cooldown_s: float = Field(default=15.0, gt=0, le=3600)
    """How long a tripped node gets no traffic before a health probe may bring it back."""

    node_probe_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between health probes (`GET /v1/models`) of each serving node."""

    node_refresh_s: float = Field(default=2.0, gt=0, le=3600)
    """Seconds between checks for a new block (the node list is re-read on each new one)."""

    payout_every_blocks: int = Field(default=100, ge=1, le=10**9)
    """Blocks between payout runs to serving operators."""

    operator_share_bps: int = Field(default=8000, ge=0, le=10_000)
    """Operators' share of the credits captured on their nodes, in basis points."""

    treasury_passphrase: SecretStr = SecretStr("")
    """Passphrase of the treasury key in the keystore (payouts are off while empty)."""

    # -- explorer, faucet and websockets -----------------------------------------------

    network_kind: Literal["devnet", "testnet", "mainnet"] = "mainnet"
    """What the chain's operators declare it to be; the faucet runs on devnet/testnet only."""

    faucet_key: str = "backend-faucet"
    """Keystore name of the key the faucet signs with (MsgFaucet on a devnet ledger,
    MsgTransferCredits from its own balance otherwise)."""

    faucet_passphrase: SecretStr = SecretStr("")
    """Passphrase of the faucet key (the faucet is off while empty)."""

    faucet_amount: int = Field(default=1000, ge=1, le=10**15)
    """Credits one faucet request gives when it names no amount."""

    faucet_max_amount: int = Field(default=10_000, ge=1, le=10**15)
    """Largest amount one faucet request may ask for."""

    faucet_address_cooldown_s: int = Field(default=86_400, ge=0)
    """Seconds before the same address may be funded again."""

    faucet_ip_cooldown_s: int = Field(default=3600, ge=0)
    """Seconds before the same client IP may ask again (for any address)."""

    explorer_cache_ttl_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest an explorer answer is cached (each new block invalidates the cache anyway)."""

    ws_queue_size: int = Field(default=64, ge=1, le=100_000)
    """Messages queued per websocket client; a client that falls further behind is dropped."""

    ws_max_per_ip: int = Field(default=64, ge=1, le=1_000_000)
    """Websocket connections one client IP may hold at once."""

    ws_ping_interval_s: float = Field(default=20.0, gt=0, le=3600)
    """Seconds between server pings; a client silent for 3 intervals is closed."""

    @field_validator("admins", "cors_origins", "serving_endpoints", mode="before")
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

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """`scheme://host[:port]` each; `*` is refused (CORS here carries credentials)."""
        origins = []
        for origin in value:
            parts = urlsplit(origin.strip())
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    f"CORS origin {origin!r} must be an exact origin like https://app.example "
                    "(no '*', no path)"
                )
            origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
        return tuple(origins)

    @field_validator("rate_tiers")
    @classmethod
    def _default_tier(cls, value: dict[str, RateTier]) -> dict[str, RateTier]:
        if "default" not in value:
            raise ValueError("rate_tiers needs a 'default' tier (it covers unknown tiers)")
        return value

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
