"""Gateway settings: a node's settings (it joins the region's cluster as a member) plus the
``[gdistrib]`` section, shaped like MongooseIM's ``mod_global_distrib`` options.

Times are seconds unless the name says otherwise (``resend_after_ms``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cluster_node.settings import C2SSettings, NodeSettings, domain_list

from .link.connection import parse_endpoint
from .mapping.sentinel import parse_address

__all__ = ["GatewaySettings", "GDistribSettings", "ConnectionsSettings", "RedisSettings", "CacheSettings",
           "BounceSettings", "S2SSettings", "DomainCert"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConnectionsSettings(_Section):
    """Inter-region links between gateways: mutual TLS against ``ca_file``."""

    endpoints: list[str] = Field(default_factory=lambda: ["0.0.0.0:5555"], description="host:port to listen on")
    advertised_endpoints: list[str] = Field(default_factory=list, description="published; default: endpoints")
    connections_per_endpoint: int = Field(2, ge=1, le=64, description="links kept to each endpoint of a region")
    endpoint_refresh_interval: float = Field(5.0, gt=0, description="seconds between reads of other regions")
    queue_max: int = Field(10_000, ge=1, description="stanzas queued per region, then resource-constraint")
    connect_timeout: float = Field(2.0, gt=0, description="seconds to wait for a link, then remote-server-timeout "
                                   "(with hold_while_down 0)")
    hold_while_down: float = Field(
        60.0, ge=0, description="seconds a region may be unreachable (its gateway restarting, a partition) while "
        "stanzas for it are queued, up to queue_max, and sent in order once a link is back; past that they get "
        "remote-server-timeout. 0: no queue, remote-server-timeout after connect_timeout")
    ping_interval: float = Field(2.0, gt=0, description="seconds between pings on each link (RTT, keep-alive)")
    ping_timeout: float = Field(10.0, gt=0, description="seconds without traffic before a link is dropped")
    ca_file: Path | None = Field(None, description="CA that signs every gateway's certificate (required)")
    cert_file: Path | None = Field(None, description="this gateway's certificate, signed by ca_file (required)")
    key_file: Path | None = Field(None, description="its private key (required)")

    @field_validator("endpoints", "advertised_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_endpoint(spec)
        return value


def check_sentinel_setting(value: Any, info: ValidationInfo) -> Any:
    """The Sentinel keys must agree with each other (each is checked once the keys before it are
    in ``info.data``), so a mistake is one line naming the key."""
    sentinels = info.data.get("sentinels") or []
    url = str(info.data.get("url", ""))
    problem = ""
    if info.field_name == "sentinels":
        for spec in value:
            try:
                parse_address(spec)
            except ValueError as e:
                problem = str(e)
        if value and url.partition("://")[0].lower() not in ("redis", "rediss"):
            problem = "need a redis:// or rediss:// url (for credentials, database, TLS), not a cluster or socket"
    elif "sentinels" not in info.data:
        return value  # sentinels itself is wrong: that is the error to report
    elif info.field_name == "sentinel_master":
        if sentinels and not value:
            problem = "the primary's name is required with sentinels"
        elif value and not sentinels:
            problem = "needs sentinels (host:port list)"
    elif value and not sentinels:
        problem = "only with sentinels"
    elif info.field_name == "read_from_replicas" and value and info.data.get("read_url"):
        problem = "give read_url or read_from_replicas, not both"
    if problem:
        raise PydanticCustomError("sentinel", "{problem}", {"problem": problem})
    return value


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6379/0",
                     description="the primary: every write goes here; redis+cluster://h1:p1,h2:p2/ for Redis Cluster")
    read_url: str = Field("", description="a replica near this region for lookups (default: url)")
    sentinels: list[str] = Field(default_factory=list, description="Redis Sentinels (host:port) that name the "
                                 "primary: failovers are followed; url then gives only credentials, db and TLS")
    sentinel_master: str = Field("", description="the primary's name in the Sentinels (sentinel monitor <name>)",
                                 validate_default=True)
    sentinel_password: str = Field("", description="AUTH to the Sentinels")
    sentinel_tls: bool = Field(False, description="TLS to the Sentinels (the url's ssl_* options)",
                               validate_default=True)
    read_from_replicas: bool = Field(False, description="with sentinels: lookups from a replica they list "
                                     "(the primary when none is up)", validate_default=True)
    expire_after: float = Field(120.0, ge=2, description="seconds a mapping lives unless refreshed")
    refresh_after: float = Field(60.0, gt=0, description="seconds between refreshes of this region's entries")
    start_timeout: float = Field(15.0, gt=0, description="seconds a starting gateway waits for Redis to answer "
                                 "before it exits (one line naming the endpoint); once running, outages are ridden out")

    _sentinel_checks = field_validator("sentinels", "sentinel_master", "sentinel_tls",
                                       "read_from_replicas")(check_sentinel_setting)

    @model_validator(mode="after")
    def _sentinel_password(self) -> RedisSettings:
        if self.sentinel_password and not self.sentinels:  # checked here: a key's error would show the value
            raise PydanticCustomError("sentinel", "sentinel_password: only with sentinels")
        return self


class CacheSettings(_Section):
    jid_lifetime: float = Field(5.0, ge=0, description="seconds a JID lookup is cached")
    domain_lifetime: float = Field(600.0, ge=0, description="seconds a domain lookup is cached")
    max_size: int = Field(100_000, ge=1, description="JIDs and domains whose region is remembered")
    cache_missed: bool = Field(True, description="also cache 'nobody has it' (for jid_lifetime)")


class BounceSettings(_Section):
    enabled: bool = Field(True, description="a stanza for a user who left: look again and resend")
    resend_after_ms: int = Field(200, ge=1, description="milliseconds before looking again")
    max_retries: int = Field(4, ge=0, description="resends before it is handled here (offline storage)")


class GDistribSettings(_Section):
    global_host: list[str] = Field(default_factory=list, description="the domains whose accounts may be in any "
                                   "region (published to and looked up in Redis); another of this region's "
                                   "domains is its own, its users reachable only here (default: every domain)")
    local_host: str = Field("", description="this region's unique name (required)")
    message_ttl: int = Field(4, ge=1, le=32, description="hops a relayed stanza may take")
    connections: ConnectionsSettings = ConnectionsSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    bounce: BounceSettings = BounceSettings()

    @field_validator("global_host")
    @classmethod
    def _global_host(cls, value: list[str]) -> list[str]:
        return domain_list(value)


class DomainCert(_Section):
    cert_file: Path
    key_file: Path


class S2SSettings(_Section):
    """Server-to-server federation (RFC 6120 §13) for domains no region of ours serves."""

    enabled: bool = Field(False, description="federate with other domains over S2S")
    host: str = Field("0.0.0.0", description="listen address of the S2S port")
    port: int = Field(5269, ge=0, le=65535, description="incoming S2S listener; 0: outgoing only")
    tls_port: int = Field(0, ge=0, le=65535, description="incoming direct TLS listener (XEP-0368); 0 disables")
    cert_file: Path | None = Field(None, description="certificate for every local domain (default: tls.cert_file)")
    key_file: Path | None = Field(None, description="private key of cert_file (default: tls.key_file)")
    domain_certs: dict[str, DomainCert] = Field(default_factory=dict, description="per-domain certificates (SNI)")
    ca_file: Path | None = Field(None, description="trust anchors for peers' certificates (default: system store)")
    verify: bool = Field(True, description="verify peers' certificates; false is for test setups and is logged")
    require_tls: bool = Field(True, description="STARTTLS required on both directions")
    sasl_external: bool = Field(True, description="use and offer SASL EXTERNAL (XEP-0178)")
    dialback: bool = Field(True, description="use and offer server dialback (XEP-0220)")
    dialback_secret: str = Field("", description="shared by every gateway of the domain (default: from cluster.secret)")
    nameservers: list[str] = Field(default_factory=list, description="DNS servers (default: /etc/resolv.conf)")
    dns_port: int = Field(53, ge=1, le=65535, description="port of the DNS servers asked for SRV records")
    hosts: dict[str, str] = Field(default_factory=dict, description="domain -> host:port, overrides DNS")
    connect_timeout: float = Field(10.0, gt=0, description="seconds per TCP connect")
    auth_timeout: float = Field(30.0, gt=0, description="seconds for a stream to be authenticated")
    idle_timeout: float = Field(600.0, gt=0, description="seconds before an unused outgoing stream is closed")
    retries: int = Field(3, ge=1, le=20, description="connection attempts before queued stanzas bounce")
    retry_backoff: float = Field(0.5, gt=0, description="seconds before the first retry, doubled each time")
    queue_max: int = Field(1000, ge=1, description="stanzas queued per remote domain while connecting")
    stanza_rate: float = Field(1000.0, ge=1, description="stanzas/s one peer domain may send us, sustained, over "
                               "all its incoming streams; excess: policy-violation to the sender")
    stanza_burst: int = Field(5000, ge=10, description="stanzas one peer domain may send at once")
    shaper_rate: int = Field(1_000_000, ge=1000, description="bytes/s read from one incoming stream (reading slows)")
    shaper_burst: int = Field(4_000_000, ge=65536, description="bytes read from one incoming stream at once")
    max_stanza_size: int = Field(262_144, ge=4096, description="bytes; a larger stanza ends the stream")
    service_domains: list[str] = Field(default_factory=list, description="subdomains the region's modules serve "
                                       "(e.g. conference.example.com, MUC): peers reach them and they send over S2S "
                                       "like the domains (give them DNS records and certificate names)")

    @field_validator("service_domains")
    @classmethod
    def _service_domains(cls, value: list[str]) -> list[str]:
        return domain_list(value)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        for domain, spec in value.items():
            host, _, port = spec.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"s2s.hosts.{domain}: expected host:port, got {spec!r}")
        return value


class GatewaySettings(NodeSettings):
    """Everything a ``meridian gateway`` process needs.  No client listeners by default."""

    node_name: str = Field("gateway1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                           description="this process's name, unique in its cluster (keys of its records name it)")
    c2s: C2SSettings = C2SSettings(port=0, tls_port=0)
    gdistrib: GDistribSettings = GDistribSettings()
    s2s: S2SSettings = S2SSettings()

    @model_validator(mode="after")
    def _gateway(self) -> GatewaySettings:
        gd = self.gdistrib
        if not gd.local_host:
            raise ValueError("gdistrib.local_host: this region's name is required")
        if not gd.connections.ca_file or not gd.connections.cert_file or not gd.connections.key_file:
            raise ValueError("gdistrib.connections: ca_file, cert_file and key_file are required (mutual TLS)")
        if not self.cluster.enabled:
            raise ValueError("cluster.enabled: a gateway joins its region's cluster; enable it")
        foreign = sorted(set(gd.global_host) - set(self.domains))
        if foreign:
            raise ValueError(f"gdistrib.global_host: {', '.join(foreign)} not among this region's domains")
        return self

    @property
    def shared_domains(self) -> list[str]:
        return self.gdistrib.global_host or self.domains
