"""Settings read from the environment once, at start-up, and validated before anything runs."""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/trialbridge.db"


class TrustedIssuer(BaseModel):
    """An external authorization server whose access tokens the service accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, description="the tokens' `iss`, exactly")
    audience: str = Field(min_length=1, description="the `aud` its tokens must carry for us")
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: tuple[Literal["RS256", "RS384", "ES256", "ES384"], ...] = ("RS384", "ES384")

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError(f"issuer {self.issuer}: give exactly one of jwks_file and jwks_url")
        return self


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    """The IANA zone names this Python can load (the OS database, else the tzdata package)."""
    return frozenset(available_timezones())


class Settings(BaseSettings):
    """Process configuration; every field can be set as an environment variable."""

    model_config = SettingsConfigDict(env_prefix="TRIALBRIDGE_", extra="ignore", frozen=True)

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "TRIALBRIDGE_DATABASE_URL"),
        description="SQLAlchemy URL: sqlite:///path or postgresql://user@host/db",
    )
    max_body_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="Largest request body")
    large_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="A body larger than this is large: it takes a large-body slot while it is "
        "read and answered, and is spooled to a temporary file instead of held in memory",
    )
    large_body_slots: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Large bodies one process handles at once; 0: no limit",
    )
    large_body_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="How long a large body waits for a slot before it is answered 503",
    )
    max_import_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Largest `$import` body (NDJSON is streamed: memory does not grow with it)",
    )
    max_import_line_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Longest `$import` line (one resource); a longer one is refused on its own",
    )
    job_backend: Literal["auto", "in-process", "procrastinate"] = Field(
        default="auto",
        description="Where bulk jobs (asynchronous `$import`, pulls) run: `procrastinate` (a "
        "queue in the same PostgreSQL, run by `trialbridge worker`), `in-process` (a thread of "
        "each server); `auto`: procrastinate on PostgreSQL, in-process on SQLite",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A running bulk job's lease: a job whose runner stopped renewing it this "
        "long is resumed from its last checkpoint by another runner",
    )
    import_job_chunk_lines: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Lines an asynchronous `$import` commits (with its checkpoint) at a time",
    )
    import_folder: Path | None = Field(
        default=None,
        description="The folder whose files an asynchronous `$import` may name as `file:` URLs "
        "(none: file URLs are refused)",
    )
    import_spool: Literal["auto", "database", "files"] = Field(
        default="auto",
        description="Where asynchronous `$import` bodies wait for their job: `database` (a "
        "table: any job worker reads what any server received), `files` (TRIALBRIDGE_IMPORT_"
        "SPOOL_DIR, which the servers and job workers must then share); `auto` = database when "
        "jobs run on the PostgreSQL queue, files when they run in the server",
    )
    import_spool_dir: Path | None = Field(
        default=None,
        description="Where asynchronous `$import` bodies wait on disk for their job when they "
        "are spooled to files (default beside the SQLite database, else ./var)",
    )
    base_url: str | None = Field(
        default=None, description="Public base URL of /fhir, used in Location and fullUrl"
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated Host names that may shape URLs (`*.example.org` allowed); "
        "default: localhost names and the address `serve` binds to, unless base_url is set",
    )
    cors_origins: str | None = Field(
        default=None,
        description="Comma-separated browser origins allowed to call the API (CORS); none: off",
    )
    bind_host: str | None = Field(
        default=None, description="Set by `trialbridge serve`: the address it listens on"
    )
    auto_migrate: bool = Field(default=True, description="Run migrations when the app starts")
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token Prometheus must send to GET /metrics; unset: /metrics is open",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder where `serve --workers N` keeps the workers' metric files (emptied at "
        "start); unset: a new temporary folder",
    )
    search_default_count: int = Field(default=50, ge=1, le=1000)
    search_max_count: int = Field(default=1000, ge=1, le=10000)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    write_retries: int = Field(default=5, ge=1, le=50, description="Attempts on a write conflict")
    bundle_max_reads: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most GET entries (reads and searches) one batch or transaction Bundle may "
        "carry; more is refused 400 too-costly before any runs",
    )
    model_check_processes: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Worker processes checking large Bundles' models while they are written; "
        "unset: 1 when the process may use two or more CPUs, else 0 (check in place)",
    )
    model_check_min_entries: int = Field(
        default=20, ge=1, description="Smallest Bundle whose models go to a worker process"
    )
    model_check_min_entries_alone: int = Field(
        default=10,
        ge=1,
        description="Smallest Bundle whose models go to a worker process while no other Bundle "
        "is being written in this process (a second core is then likely idle)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    protocol_dir: Path | None = Field(
        default=None, description="Folder of site protocol files (*.toml); same id replaces"
    )
    terminology_dir: Path | None = Field(
        default=None, description="Folder of site value-set files (*.toml) extending ours"
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Key for subject ids; by default one is generated once and kept in the DB",
    )
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs that reach internal addresses"
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0, le=3600)
    webhook_interval_seconds: float = Field(
        default=2.0, ge=0, le=3600, description="Outbox delivery poll interval; 0 = off"
    )
    webhook_lease_margin_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How much longer than its timeout a notification in flight stays leased to "
        "the process sending it; after a crash another process sends it again once this passes",
    )
    cohort_refresh_interval_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="How often each server process looks for studies other processes changed and "
        "recomputes stale cohort snapshots; 0: this process computes only for ?fresh=true",
    )
    cohort_debounce_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="How long a study must go without changes before its cohort is recomputed",
    )
    cohort_max_delay_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="Under steady writes, recompute a stale study after this long anyway",
    )
    cohort_fresh_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long GET …/outcomes?fresh=true waits for a fresh snapshot before 503",
    )
    subject_cache_mb: int = Field(
        default=64,
        ge=0,
        le=65536,
        description="Memory per server process for rendered per-subject timelines, outcomes and "
        "eligibility (served again while the subject's data is unchanged); 0: off",
    )
    api_default_limit: int = Field(default=50, ge=1, le=1000)
    api_max_limit: int = Field(default=500, ge=1, le=10000)
    auth_disabled: bool = Field(
        default=False,
        description="No authentication at all: refused unless the server binds only to loopback",
    )
    token_lifetime_seconds: int = Field(
        default=300, ge=30, le=300, description="Access tokens live at most 5 minutes (SMART)"
    )
    clock_skew_seconds: int = Field(
        default=60, ge=0, le=300, description="Tolerance on exp, nbf and iat of tokens"
    )
    token_cache_entries: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Verified access tokens each process keeps (by SHA-256, never the token) so a "
        "repeat token skips only the signature check; 0: off",
    )
    auth_issuers: tuple[TrustedIssuer, ...] = Field(
        default=(),
        description="external authorization servers whose tokens are accepted (JSON list)",
    )
    audit_spool_dir: Path | None = Field(
        default=None,
        description="The local journal of audit records not yet in the database; keep it on a "
        "persistent volume (default: beside the SQLite database, else under ./var/audit-spool)",
    )
    rate_limit_client_per_second: float = Field(
        default=200.0,
        ge=0,
        le=1_000_000,
        description="Requests per second each authenticated client may make (per process); 0: off",
    )
    rate_limit_client_burst: int = Field(
        default=1000, ge=1, le=1_000_000, description="Requests a client may make at once"
    )
    rate_limit_address_per_second: float = Field(
        default=400.0,
        ge=0,
        le=1_000_000,
        description="Requests per second from each network address (per process); 0: off",
    )
    rate_limit_address_burst: int = Field(
        default=2000, ge=1, le=1_000_000, description="Requests an address may make at once"
    )
    site_timezone: str = Field(
        default="UTC",
        description="IANA time zone of the site (America/New_York): a UTC timestamp's calendar "
        "day, and today, are the site's",
    )
    header_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A request's line and headers must arrive within this many seconds of the "
        "connection opening (or of their first byte on a kept-alive connection); `serve` only",
    )
    body_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        description="A request's body must arrive within this many seconds of its headers; "
        "else 408",
    )
    keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="An idle kept-alive connection closes after this many seconds; `serve` only",
    )
    max_connections: int = Field(
        default=500,
        ge=0,
        le=1_000_000,
        description="Open connections per server process; a request on one more gets 503 "
        "(probes excepted); 0: no cap; `serve` only",
    )
    admin_key_file: Path | None = Field(
        default=None,
        description="Where the first start writes the local admin client's private key "
        "(default: beside the SQLite database)",
    )
    sources_file: Path | None = Field(
        default=None,
        description="TOML or JSON file naming the hospital FHIR servers `trialbridge pull` and "
        "POST /api/v1/sources/{id}/sync pull from",
    )
    pull_max_retries: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Retries of one request to a hospital source (429, 503, network) before the "
        "pull gives up",
    )
    pull_max_wait_seconds: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description="Longest wait a hospital's Retry-After may ask for (longer asks are capped)",
    )
    pull_poll_limit: int = Field(
        default=720,
        ge=1,
        le=100_000,
        description="Status polls of one $export before the pull gives up",
    )
    pull_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Timeout of each request to a hospital source"
    )
    pull_interval_seconds: float = Field(
        default=0.0,
        ge=0,
        le=31 * 86400,
        description="Pull every source this often in the background (0: only on demand); a "
        "source's own `every_seconds` or `schedule` wins",
    )

    @field_validator("sources_file")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        """A configured sources file that is missing is a deployment error, caught at start-up."""
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("protocol_dir", "terminology_dir")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        """A configured folder that is missing is a deployment error, caught at start-up."""
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("site_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """An unknown zone name stops start-up; dates would otherwise fall on the wrong day."""
        if value not in _zone_names():
            shown = value if len(value) <= 64 else value[:64] + "…"
            raise ValueError(
                f"TRIALBRIDGE_SITE_TIMEZONE {shown!r} is not an IANA time zone name "
                "(such as America/New_York, Europe/Paris or UTC)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        """Fail at start-up, not at the first request, on a URL we cannot serve."""
        scheme = value.split(":", 1)[0]
        if scheme.startswith("postgres"):
            if "://" not in value:
                raise ValueError("DATABASE_URL for PostgreSQL must look like postgresql://host/db")
            rest = value.split("://", 1)[1]
            return f"postgresql+psycopg://{rest}"
        if scheme.startswith("sqlite"):
            if not value.startswith(("sqlite:///", "sqlite+pysqlite:///")):
                raise ValueError(
                    "DATABASE_URL for SQLite must be sqlite:///relative/or//abs/path.db"
                )
            return value
        raise ValueError(f"DATABASE_URL scheme {scheme!r} is not supported (sqlite or postgresql)")

    @field_validator("base_url")
    @classmethod
    def _absolute_base(cls, value: str | None) -> str | None:
        """A base URL that is not absolute would produce broken Location headers."""
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("TRIALBRIDGE_BASE_URL must be an absolute http(s) URL")
        return value.rstrip("/") if value else value

    def site_zone(self) -> dt.tzinfo:
        """The site's time zone (validated at start-up)."""
        return ZoneInfo(self.site_timezone)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded database."""
        return self.database_url.startswith("sqlite")

    def cors_allow_list(self) -> list[str]:
        """Origins a browser may call the API from (exact `https://host[:port]`); none by default."""
        return [o.strip().rstrip("/") for o in (self.cors_origins or "").split(",") if o.strip()]

    def host_allow_list(self) -> list[str] | None:
        """Hosts a request may name; None when URLs never come from the Host header."""
        if self.allowed_hosts:
            return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
        if self.base_url:
            return None  # every URL comes from the configured base
        local = ["localhost", "127.0.0.1", "::1"]
        bound = (self.bind_host or "").strip("[]").lower()
        return local + ([bound] if bound and bound not in ("0.0.0.0", "::") else [])

    def spool_dir(self) -> Path:
        """Where this deployment journals audit records."""
        if self.audit_spool_dir is not None:
            return self.audit_spool_dir
        database = self.sqlite_path()
        if database is not None:
            return database.parent / f"{database.stem}-audit-spool"
        # one journal per database: two deployments sharing ./var never mix their records
        named = hashlib.sha256(self.database_url.encode()).hexdigest()[:16]
        return Path("var") / "audit-spool" / named

    def bulk_spool_dir(self) -> Path:
        """Where this deployment keeps asynchronous `$import` bodies until their job ends."""
        if self.import_spool_dir is not None:
            return self.import_spool_dir
        database = self.sqlite_path()
        if database is not None:
            return database.parent / f"{database.stem}-import-spool"
        named = hashlib.sha256(self.database_url.encode()).hexdigest()[:16]
        return Path("var") / "import-spool" / named

    def spools_in_database(self) -> bool:
        """Asynchronous `$import` bodies wait in the database (`import_spool`), not in files."""
        if self.import_spool == "auto":
            return not self.jobs_in_process()
        return self.import_spool == "database"

    def jobs_in_process(self) -> bool:
        """Bulk jobs run in the server's own thread (SQLite default), not on procrastinate."""
        if self.job_backend == "auto":
            return self.is_sqlite
        return self.job_backend == "in-process"

    def sqlite_path(self) -> Path | None:
        """File behind a SQLite URL, or None for in-memory/PostgreSQL."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split(":///", 1)[1]
        return None if path in ("", ":memory:") else Path(path)
