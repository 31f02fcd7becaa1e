"""Node settings: a TOML file plus ``MERIDIAN_…`` environment overrides (pydantic-settings).

Precedence, highest first: environment (``MERIDIAN_C2S__PORT=5522``; ``__`` separates sections),
then the TOML file, then the defaults below.  A bad value stops the process at start with one
line naming the key (:func:`load_settings` raises :class:`ConfigError`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "ConfigError", "NodeSettings", "C2SSettings", "LimitsSettings", "TlsSettings",
    "StorageSettings", "OfflineSettings", "RegistrationSettings", "AdminApiSettings", "UserApiSettings",
    "WebSocketSettings", "BoshSettings", "load_settings",
]


class StartError(Exception):
    """The settings are valid but something they name is not there at start (the database): one
    line for the operator, exit status 1, nothing left half-started."""


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line the operator sees."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class C2SSettings(_Section):
    """Client-to-server listeners (RFC 6120 §5: STARTTLS on ``port``, XEP-0368 direct TLS on ``tls_port``)."""

    host: str = Field("0.0.0.0", description="listen address of both c2s ports")
    port: int = Field(5222, ge=0, le=65535, description="STARTTLS port; 0 disables")
    tls_port: int = Field(5223, ge=0, le=65535, description="direct TLS port (XEP-0368); 0 disables")
    require_tls: bool = Field(True, description="no SASL and no stanza before STARTTLS (RFC 6120 §5.3.1)")
    allow_plain: bool = Field(True, description="offer SASL PLAIN (only ever over TLS)")
    resource_conflict: Literal["kick_old", "refuse", "rename"] = Field(
        "kick_old", description="a bind of a resource in use: end the old session (conflict), refuse the new "
        "bind, or give it another resource")
    handshake_timeout: float = Field(30.0, gt=0, description="seconds to finish TLS+SASL+bind")
    idle_timeout: float = Field(600.0, gt=0, description="seconds of silence before connection-timeout")
    park_parser_after: float = Field(
        10.0, ge=0, description="seconds without input after which a logged-in connection's XML parser is "
        "parked (about 11 KB less per idle connection; re-created from the stream header on the next byte); "
        "0: never")
    reuse_port: bool = Field(
        False, description="bind both c2s ports with SO_REUSEPORT, so several node processes of one host "
        "(members of one cluster, one per core) share them and the kernel spreads the connections among them "
        "(docs/operations.md, One process per core)")


def domain_list(value: list[str]) -> list[str]:
    """Domains in their normalised form (RFC 7622), or a ValueError naming the bad one."""
    from .xmpp.jid import InvalidJid, Jid

    out = []
    for d in value:
        try:
            jid = Jid.parse(d)
        except InvalidJid as e:
            raise ValueError(f"{d!r} is not a valid domain ({e})") from None
        if not jid.is_domain:
            raise ValueError(f"{d!r} is not a bare domain")
        out.append(jid.domain)
    return out


def _ip_networks(value: list[str]) -> list[str]:
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return value


class WebSocketSettings(_Section):
    """XMPP over WebSocket (RFC 7395) and its XEP-0156 discovery (``/.well-known/host-meta``), on
    their own HTTP listener.  Disabled by default (like ``[components]``): 5280 is the usual port."""

    host: str = Field("127.0.0.1", description="listen address of the WebSocket listener")
    port: int = Field(0, ge=0, le=65535, description="WebSocket listener (e.g. 5280); 0 disables")
    tls: bool = Field(True, description="wss:// with the node's certificate; false behind a TLS proxy")
    path: str = Field("/ws", pattern=r"^/", description="the WebSocket endpoint")
    public_url: str = Field("", description="the URL XEP-0156 advertises; empty: from host, port and path")
    allowed_origins: list[str] = Field(default_factory=list, description="Origin header values; empty: any")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses/networks whose X-Forwarded-For/-Proto are honoured")
    ping_interval: float = Field(30.0, ge=0, description="seconds between WebSocket pings; 0: none")
    web_root: str = Field("", description="a directory served at /web/ (e.g. a web client); empty: none")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _ip_networks(value)


class BoshSettings(_Section):
    """XMPP over BOSH (XEP-0124, XEP-0206), served at ``path`` on the ``[websocket]`` HTTP listener
    (same address, port and TLS): on whenever that listener is, unless ``enabled`` is false."""

    enabled: bool = Field(True, description="serve BOSH on the [websocket] listener (when its port is set)")
    path: str = Field("/http-bind", pattern=r"^/", description="the BOSH endpoint")
    public_url: str = Field("", description="the URL XEP-0156 advertises; empty: the WebSocket's, with this path")
    allowed_origins: list[str] = Field(
        default_factory=list, description="Origin header values (CORS); empty: those of [websocket]; both empty: any")
    max_wait: int = Field(60, ge=1, le=3600, description="cap on the seconds a request is held (client's 'wait')")
    max_hold: int = Field(1, ge=1, le=10, description="cap on the requests held at once (client's 'hold')")
    inactivity: int = Field(60, ge=1, le=3600, description="seconds without a request before the session ends")
    max_pause: int = Field(120, ge=0, le=3600, description="longest 'pause' a client may ask for, in seconds")
    polling: int = Field(2, ge=0, le=60, description="seconds between a polling (hold 0) client's empty requests")
    max_body_size: int = Field(524_288, ge=4096, description="bytes of one request body (413 beyond)")
    max_sessions: int = Field(10_000, ge=1, description="BOSH sessions this node holds at once")


class LimitsSettings(_Section):
    """Per-connection budgets: a peer over one gets a stream error, others are unaffected."""

    max_stanza_size: int = Field(262_144, ge=1024, description="bytes of one stanza (XEP-0478)")
    max_depth: int = Field(32, ge=4, description="element nesting inside a stanza")
    max_connections_per_ip: int = Field(1000, ge=1, description="client connections from one address "
                                        "(TCP, WebSocket and BOSH together); more get policy-violation")
    max_connections: int = Field(100_000, ge=1, description="client connections of the node in all; held "
                                 "below the process's descriptor limit (RLIMIT_NOFILE, raised to its hard "
                                 "limit at start) less 256, with a warning at start when it is")
    max_pre_auth_connections: int = Field(
        10_000, ge=1, description="connections not yet authenticated, in all (a flood of idle handshakes)")
    max_sessions_per_account: int = Field(
        100, ge=1, description="resources one account may have bound in the region; beyond: resource-constraint")
    shaper_rate: int = Field(100_000, ge=100, description="bytes/s a client may send, sustained")
    shaper_burst: int = Field(500_000, ge=1024, description="bytes a client may send at once")
    shaper_max_throttle: float = Field(
        10.0, gt=0, description="seconds a client may stay throttled before policy-violation")
    stanza_rate: float = Field(
        200.0, ge=1, description="stanzas/s a client may send, sustained; excess: policy-violation")
    stanza_burst: int = Field(1000, ge=10, description="stanzas a client may send at once")
    # Backpressure: a client whose output is behind, and every client sending to it, stop being
    # read until it catches up; the excess waits in the senders' sockets, not in the node.
    outbound_high_water: int = Field(
        262_144, ge=4096, description="bytes waiting to be written to a client before its senders stop being read")
    outbound_low_water: int = Field(
        65_536, ge=0, description="bytes waiting to be written to a client under which its senders are read again")
    inbound_queue: int = Field(
        500, ge=1, description="stanzas read from a client and not yet handled before reading it pauses")
    write_buffer_limit: int = Field(
        8_388_608, ge=65_536, description="bytes waiting to be written to a client that does not read: dropped")

    @model_validator(mode="after")
    def _water_marks(self) -> LimitsSettings:
        if self.outbound_low_water >= self.outbound_high_water:
            raise ValueError("limits.outbound_low_water must be below limits.outbound_high_water")
        if self.write_buffer_limit <= self.outbound_high_water:
            raise ValueError("limits.write_buffer_limit must be above limits.outbound_high_water")
        return self


class AuthThrottleSettings(_Section):
    """Authentication failures per source address (SASL, SASL2, FAST, the user API, and on gateways
    S2S dialback keys that do not verify and refused SASL EXTERNAL), shared by the members of a
    region: past ``delay_after`` failures in ``window`` each answer waits, at ``max_failures`` the
    address is refused for ``ban_seconds``."""

    enabled: bool = Field(True, description="slow down, then ban, addresses that fail to authenticate")
    max_failures: int = Field(20, ge=1, description="failures in the window that ban the address")
    window: float = Field(600.0, gt=0, description="seconds over which failures are counted")
    delay_after: int = Field(3, ge=0, description="failures answered at once; later ones are delayed")
    failure_delay: float = Field(1.0, ge=0, description="seconds of delay added per failure past delay_after")
    max_delay: float = Field(5.0, ge=0, description="longest delay of one answer")
    ban_seconds: float = Field(900.0, gt=0, description="how long a banned address is refused")
    exempt: list[str] = Field(default_factory=list, description="addresses/networks never throttled")

    @field_validator("exempt")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _ip_networks(value)


class LoginCacheSettings(_Section):
    """SASL PLAIN passwords verified recently, remembered per process so a returning client costs
    no PBKDF2: keyed by an HMAC (random per-process key) of the account, the password and the
    stored SCRAM keys — a password changed anywhere in the cluster no longer matches.  Only
    successes are kept."""

    enabled: bool = Field(True, description="remember PLAIN passwords verified by PBKDF2 (successes only)")
    max_entries: int = Field(20_000, ge=1, description="accounts whose verified login is remembered (~300 bytes each)")
    ttl: float = Field(3600.0, gt=0, description="seconds an entry counts from the PBKDF2 that proved it")


class TlsSettings(_Section):
    """Certificate and key (PEM). Empty: a self-signed pair is generated in ``data_dir/tls``."""

    cert_file: Path | None = Field(None, description="PEM certificate chain of the node's domains")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")


class StorageSettings(_Section):
    """``sqlite:///path.db`` (default: ``data_dir/meridian.db``) or ``postgresql://…``."""

    url: str = Field("", description="sqlite:///path.db or postgresql://…; empty: data_dir/meridian.db")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and "://" in value and not value.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ValueError("use sqlite:///path.db or postgresql://user@host/db")
        return value


class OfflineSettings(_Section):
    """XEP-0160 offline storage."""

    max_messages: int = Field(100, ge=0, description="per user; 0 disables offline storage")


class RegistrationSettings(_Section):
    """XEP-0077 in-band registration, off unless the operator turns it on."""

    allow_in_band: bool = Field(False, description="XEP-0077 account creation by clients (rate-limited per address)")
    min_password_length: int = Field(8, ge=1, description="shortest password accepted when registering or changing")
    max_per_address: int = Field(
        10, ge=0, description="in-band registrations one address may make per hour on a node; 0: no limit")


class ClusterSettings(_Section):
    """CETS-style regional cluster (MongooseIM 6.2): replicated tables, discovery, no join commands."""

    enabled: bool = Field(False, description="join the region's cluster (else the node stands alone)")
    name: str = Field("meridian", min_length=1, description="members join only their own cluster")
    secret: str = Field("", description="shared by the members; required when enabled")
    host: str = Field("127.0.0.1", description="listen address of the cluster link")
    port: int = Field(7100, ge=0, le=65535, description="cluster link listener (TLS)")
    advertise: str = Field("", description="host:port the others connect to (default host:port)")
    discovery: Literal["rdbms", "file"] = Field(
        "rdbms", description="how members find each other: a table every member refreshes, or a fixed list")
    discovery_url: str = Field("", description="rdbms: the region's database (default: storage.url)")
    nodes: list[str] = Field(default_factory=list, description="file: name@host:port of every member")
    refresh_interval: float = Field(5.0, gt=0, description="seconds between discovery refreshes")
    last_seen_threshold: float = Field(3600.0, gt=0, description="seconds before a silent row is deleted")
    ping_interval: float = Field(1.0, gt=0, description="seconds between pings on each cluster link")
    ping_timeout: float = Field(5.0, gt=0, description="seconds without traffic before a member is down")
    handoff_queue_max: int = Field(
        10_000, ge=0, description="stanzas for other regions a node holds while its region has no gateway")
    handoff_queue_timeout: float = Field(
        30.0, ge=0, description="seconds a held stanza waits for a gateway before it is handled here (offline)")

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: list[str]) -> list[str]:
        from .cluster.discovery import parse_peer

        for spec in value:
            parse_peer(spec)
        return value


class ComponentSettings(_Section):
    """External components (XEP-0114): services on their own domain, e.g. ``muc.example.com``."""

    host: str = Field("127.0.0.1", description="listen address of the component port")
    port: int = Field(0, ge=0, le=65535, description="XEP-0114 listener; 0 disables")
    tls: bool = Field(True, description="direct TLS on the component port; plain TCP only on loopback")
    secrets: dict[str, str] = Field(default_factory=dict, description="component domain -> shared secret")
    shaper_rate: int = Field(10_000_000, ge=0, description="bytes/s a component may send, sustained; beyond, "
                             "reading it slows down (never closed: a component is trusted); 0: no shaper")
    shaper_burst: int = Field(20_000_000, ge=1024, description="bytes a component may send at once")

    @model_validator(mode="after")
    def _safe(self) -> ComponentSettings:
        for domain, secret in self.secrets.items():
            if len(secret) < 12:
                raise ValueError(f"components.secrets.{domain}: at least 12 characters are required")
        if not self.tls and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("components.tls: plain TCP is only allowed on a loopback host")
        return self


class AdminApiSettings(_Section):
    """The admin HTTP API (GraphQL, ``/metrics``, ``/health``, ``/ready``): never open without credentials
    unless ``allow_loopback_without_auth`` is set and the request comes from the loopback address."""

    host: str = Field("127.0.0.1", description="listen address of the admin API")
    port: int = Field(5551, ge=0, le=65535, description="admin API port (MongooseIM's 5551); 0 disables")
    username: str = Field("admin", min_length=1, description="HTTP Basic user of the admin API")
    password: str = Field("", description="clear password; or give password_hash")
    password_hash: str = Field("", description="pbkdf2_sha256$ROUNDS$SALT$HASH (meridian ctl --hash-password)")
    allow_loopback_without_auth: bool = Field(False, description="requests from 127.0.0.1/::1 need no credentials")
    tls: bool = Field(False, description="serve HTTPS with the node's certificate")


class UserApiSettings(_Section):
    """The user HTTP API (GraphQL): HTTP Basic with the user's own bare JID and password."""

    host: str = Field("127.0.0.1", description="listen address of the user API")
    port: int = Field(5561, ge=0, le=65535, description="user API port (MongooseIM's 5561); 0 disables")
    tls: bool = Field(False, description="serve HTTPS with the node's certificate")


class NodeSettings(BaseSettings):
    """Everything a ``meridian node`` process needs."""

    model_config = SettingsConfigDict(
        env_prefix="MERIDIAN_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    toml_file: ClassVar[Path | None] = None

    node_name: str = Field("node1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                           description="this process's name, unique in its cluster (keys of its records name it)")
    domains: list[str] = Field(default_factory=lambda: ["localhost"], min_length=1,
                               description="XMPP domains served; the first is the default one")
    data_dir: Path = Field(Path("meridian-data"), description="generated TLS pair, SQLite file, control socket")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO",
                                                                    description="of the process's log on stderr")
    scram_iterations: int = Field(4096, ge=4096, description="PBKDF2 rounds for new passwords")
    shutdown_timeout: float = Field(10.0, gt=0, description="seconds a stop waits for session clean-ups")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "asyncio", description="the process's event loop: asyncio's own, or uvloop (libuv); auto: uvloop when "
        "it is installed. asyncio is the default until uvloop shows a gain in benchmarks/compare.py")
    c2s: C2SSettings = C2SSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    bosh: BoshSettings = BoshSettings()
    limits: LimitsSettings = LimitsSettings()
    auth_throttle: AuthThrottleSettings = AuthThrottleSettings()
    login_cache: LoginCacheSettings = LoginCacheSettings()
    tls: TlsSettings = TlsSettings()
    storage: StorageSettings = StorageSettings()
    offline: OfflineSettings = OfflineSettings()
    registration: RegistrationSettings = RegistrationSettings()
    cluster: ClusterSettings = ClusterSettings()
    components: ComponentSettings = ComponentSettings()
    admin: AdminApiSettings = AdminApiSettings()
    user_api: UserApiSettings = UserApiSettings()
    # [modules.<name>] tables, checked against each module's own settings model (modules/loader.py).
    modules: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _modules(self) -> NodeSettings:
        from .modules.loader import module_settings

        module_settings(self.modules)  # raises "modules.<name>.<key>: …"
        return self

    @model_validator(mode="after")
    def _cluster_secret(self) -> NodeSettings:
        if self.cluster.enabled and len(self.cluster.secret) < 16:
            raise ValueError("cluster.secret: at least 16 characters are required when the cluster is enabled")
        return self

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return domain_list(value)

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{(self.data_dir / 'meridian.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = getattr(settings_cls, "toml_file", None)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_S = TypeVar("_S", bound=BaseSettings)


def _format_error(err: ValidationError, path: Path | None) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if not key:  # a check across keys: its message starts with the key it is about
        key, _, msg = msg.removeprefix("Value error, ").partition(": ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    where = f" in {path}" if path else ""
    got = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"config error{where}: {key}: {msg}{shown}{more}"


def load_settings(
    config: str | Path | None = None, cls: type[_S] = NodeSettings, **overrides: Any  # type: ignore[assignment]
) -> _S:
    """Load settings of ``cls`` from ``config`` (TOML) and the environment.

    Raises :class:`ConfigError` with one line naming the file, the key and the problem.
    """
    path = Path(config) if config is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config error: {path}: no such file")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config error in {path}: not valid TOML: {e}") from None
    bound = type(cls.__name__, (cls,), {"toml_file": path})
    try:
        return bound(**overrides)  # type: ignore[no-any-return]
    except ValidationError as e:
        raise ConfigError(_format_error(e, path)) from None
