"""HTTP File Upload (XEP-0363): a service at ``upload.<domain>`` hands out upload slots, and an
HTTP listener of this module (not the admin API's, which sits behind the admin's credentials)
takes the PUTs and serves the GETs.

* **The service.**  Stanzas to ``upload.<domain>`` (``service_domain``) are for a domain no node
  serves as an account domain: the module takes them on the routing chain (``route_remote`` at
  priority 20: after external components, before the gateway and S2S) on whichever node routes
  them, and answers itself — disco#info (identity ``store/file``, the feature, and the XEP-0128
  form with ``max-file-size``), disco#items (none), XEP-0199 pings and slot requests.  Nothing is
  kept between a slot and its upload: the PUT URL is signed (HMAC over token, file name, size,
  content type and expiry, see :mod:`.slots`), so any node of the region with the same key checks
  it.  The key is ``secret``, else derived from ``cluster.secret``, else a random one kept in
  ``data_dir`` (a single node).
* **Who.**  Slots are for the accounts of the service's domain (``not-allowed`` for anyone else,
  e.g. over S2S).  A file name that is not one safe path segment, a malformed size or content
  type is ``bad-request``; a size over ``max_file_size`` is ``not-acceptable`` with
  ``<file-too-large><max-file-size/></file-too-large>``; over the ``quota`` (bytes of slots given
  to the account in the last ``quota_window`` seconds, in the SQL table ``http_upload_slots``,
  emptied with the account) ``resource-constraint`` with ``<retry stamp/>``.  Slots count when
  given, uploaded or not.
* **HTTP.**  ``port`` (0: no listener on this node) on ``host``, HTTPS with the node's certificate
  unless ``tls = false`` (or ``cert_file``/``key_file`` of its own).  URLs are
  ``<public_url>/upload/<token>/<filename>`` (``public_url`` default ``https://<domain>:<port>``).
  With the disk backend the service is offered when this node listens or ``public_url`` says
  where uploads go (with S3, always).
* **Storage.**  ``backend = "disk"`` (the default): files go to ``storage_dir`` (default
  ``<data_dir>/upload``) and are removed ``expire_after`` seconds after their upload by a
  periodic task.  **The nodes of a region that serve uploads must share that directory** (a
  shared volume) and the key: a slot given by one node may be PUT to another, and the file
  fetched from a third.
* **S3.**  ``backend = "s3"`` (:mod:`.s3`, settings in ``[modules.http_upload.s3]``): no listener
  and no key; the slot's PUT URL is a pre-signed S3 PutObject URL (SigV4, ``slot_ttl`` seconds)
  signing Content-Length and the requested Content-Type, the GET URL a pre-signed GetObject URL
  (``s3.get_expiry``) or ``<s3.public_url>/<key>``.  Size and quota are still checked here, when
  the slot is asked for.  Expired objects are removed by the region's member with the lowest name
  (ListObjectsV2 + DeleteObjects under ``s3.prefix``); the other members only forget the quota log.
* **Discovery.**  Clients find the service in the server's disco#items: the module adds it on the
  ``disco_server_items`` fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep, domain_template
from ...xmpp import errors, ns
from ...xmpp.errors import StanzaError
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from .s3 import MAX_PUT_SIZE, S3Settings, S3Store, base_url
from .server import UploadServer
from .slots import (
    NS,
    BadSlotRequest,
    FileTooLarge,
    QuotaExceeded,
    Signer,
    SlotRefused,
    derive_key,
    get_url,
    info_form,
    new_slot,
    parse_request,
    put_url,
    quota_retry,
    retry_element,
    slot_element,
    too_large_element,
)
from .store import DiskStore, FileStore, SlotLog

__all__ = ["HttpUpload", "HttpUploadSettings", "ITEMS_HOOK", "ROUTE_PRIORITY"]

log = logging.getLogger("meridian.http_upload")

ROUTE_PRIORITY = 20  # route_remote: after components (10), before the gateway (40) and the hand-off (50)
# fold(list[dict[str, str]], to: Jid) — the items of the server's disco#items (not run by the core yet).
ITEMS_HOOK = Hook.DISCO_SERVER_ITEMS
INFO = f"{{{ns.DISCO_INFO}}}"
ITEMS = f"{{{ns.DISCO_ITEMS}}}"
KEY_FILE = "http_upload.key"


class HttpUploadSettings(ModuleSettings):
    service_domain: str = Field("upload.{domain}", description="the upload service's JID ({domain}: each domain "
                                "the node serves)")
    host: str = Field("0.0.0.0", description="listen address of the HTTP(S) listener")
    port: int = Field(0, ge=0, le=65535, description="HTTP(S) listener for uploads and downloads; 0: none on "
                      "this node (the service is offered when port or public_url is set)")
    tls: bool = Field(True, description="HTTPS with the node's certificate (or cert_file/key_file)")
    cert_file: Path | None = Field(None, description="certificate (PEM) of the listener (default: the node's)")
    key_file: Path | None = Field(None, validate_default=True, description="its key (PEM)")
    public_url: str = Field("", description="base of the URLs handed out, {domain} replaced (default "
                            "https://{domain}:<port>, http:// without tls)")
    storage_dir: Path | None = Field(None, description="where files are kept (default <data_dir>/upload); "
                                     "shared by the nodes of a region")
    secret: str = Field("", description="key of the signed upload URLs, the same on every node (default: "
                        "derived from cluster.secret)")
    max_file_size: int = Field(104_857_600, ge=1, description="bytes of one file")
    slot_ttl: int = Field(120, ge=10, le=86_400, description="seconds a PUT URL stays valid")
    expire_after: int = Field(7 * 86_400, ge=0, description="seconds uploaded files are kept (0: forever)")
    cleanup_interval: float = Field(3600.0, gt=0, description="seconds between removals of expired files")
    quota: int = Field(1_073_741_824, ge=0, description="bytes of slots one account gets per quota_window "
                       "(0: no quota)")
    quota_window: int = Field(86_400, ge=60, description="seconds the quota is counted over")
    backend: Literal["disk", "s3"] = Field("disk", description="where files go: disk (storage_dir, served by "
                                           "this module's listener) or s3 (a bucket, see s3; no listener)")
    s3: S3Settings = Field(default_factory=dict, validate_default=True,
                           description="[modules.http_upload.s3] for backend = \"s3\": bucket (required), "
                           "endpoint_url, region, prefix, access_key_id and secret_access_key (default: the AWS "
                           "credential chain), path_style, public_url (default: pre-signed GET URLs), get_expiry, "
                           "timeout; see docs/modules.md")

    @field_validator("service_domain")
    @classmethod
    def _service_domain(cls, value: str) -> str:
        return domain_template(value, "upload.{domain}")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return base_url(value)

    @field_validator("key_file")
    @classmethod
    def _pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (info.data.get("cert_file") is None) != (value is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("at least 16 characters are required")
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str, info: ValidationInfo) -> str:
        if value != "s3":
            return value
        for key in ("port", "public_url"):
            if info.data.get(key):
                raise ValueError(f"{key} is for this module's own listener; with backend = \"s3\" uploads and "
                                 f"downloads go to the bucket (remove {key}, or see s3.public_url)")
        if info.data.get("max_file_size", 0) > MAX_PUT_SIZE:
            raise ValueError(f"with backend = \"s3\" max_file_size is at most {MAX_PUT_SIZE} (one PutObject)")
        return value

    @field_validator("s3")
    @classmethod
    def _s3(cls, value: S3Settings, info: ValidationInfo) -> S3Settings:
        missing = value.missing() if info.data.get("backend") == "s3" else None
        if missing:
            raise ValueError(missing)
        return value


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _stored_key(path: Path) -> bytes:
    """A random key kept in ``path`` (made on first use; mode 0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise ValueError(f"{path}: the key is too short") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


class HttpUpload(Module):
    name = "http_upload"
    description = ("HTTP File Upload: a service handing out signed upload slots, and its own HTTP(S) listener "
                   "or an S3-compatible bucket")
    xeps = (Xep(363, "1.2.0", "complete", "the service at upload.<domain>; files in a directory the "
                "region's nodes share, or in an S3-compatible bucket (presigned URLs); no purposes announced"),)
    Settings = HttpUploadSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: HttpUploadSettings = self.settings  # type: ignore[assignment]
        self.server: UploadServer | None = None
        self.bucket: S3Store | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self.counters = {"slots": 0, "refused": 0, "expired": 0}
        cfg = self.cfg
        if cfg.backend == "disk" and not cfg.port and not cfg.public_url:
            log.debug("http_upload: no port and no public_url: the service is not offered")
            return
        node = host.settings
        self.services: dict[str, str] = {}
        for domain in sorted(host.domains):
            service = Jid.parse(cfg.service_domain.format(domain=domain)).domain
            if service in host.domains or service in self.services:
                raise ValueError(f"modules.http_upload.service_domain: {service} is already a served domain "
                                 "or another domain's upload service")
            self.services[service] = domain
        self.store: FileStore | S3Store
        if cfg.backend == "s3":
            self.store = self.bucket = await S3Store.open(cfg.s3)
        else:
            key = derive_key(cfg.secret, node.cluster.secret)
            if not key:
                node.data_dir.mkdir(parents=True, exist_ok=True)
                key = _stored_key(node.data_dir / KEY_FILE)
            self.signer = Signer(key)
            self.store = DiskStore(cfg.storage_dir or node.data_dir / "upload")
        self.slot_log = SlotLog(host.storage)
        await self.slot_log.migrate()
        host.hook(Hook.ROUTE_REMOTE, self._route, ROUTE_PRIORITY)
        for service in self.services:  # a member without this module (a gateway) forwards to us
            host.publish_domain(service)
        host.hook(ITEMS_HOOK, self._items)
        host.add_query("http_upload", "status", self.status)
        if self.bucket is not None:
            log.info("http_upload: %s, files in the bucket %s%s (%s)", ", ".join(sorted(self.services)),
                     cfg.s3.bucket, f" under {cfg.s3.prefix}" if cfg.s3.prefix else "",
                     cfg.s3.endpoint_url or f"AWS {cfg.s3.region}")
            self._check = asyncio.get_running_loop().create_task(self._check_bucket(self.bucket))
        elif cfg.port and isinstance(self.store, FileStore):
            context = None
            if cfg.tls:
                context = _tls_context(*self._certificate())
            self.server = UploadServer(self.store, self.signer, max_age=cfg.expire_after)
            await self.server.start(cfg.host, cfg.port, context)
            log.info("http_upload: %s on %s:%d (%s), files in %s", ", ".join(sorted(self.services)), cfg.host,
                     cfg.port, "https" if context else "http", cfg.storage_dir or node.data_dir / "upload")
        self._cleanup = host.every(self.cfg.cleanup_interval, self.clean_up, "http_upload clean-up")

    async def stop(self) -> None:
        for task in (self._cleanup, self._check):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._cleanup = self._check = None
        server, self.server = self.server, None
        if server is not None:
            await server.stop()
        bucket, self.bucket = self.bucket, None
        if bucket is not None:
            await bucket.close()

    async def _check_bucket(self, bucket: S3Store) -> None:
        """Say at start, without holding the start up, when the bucket cannot be used (slots would
        still be handed out: the PUTs would fail)."""
        problem = await bucket.check()
        if problem is not None:
            log.warning("http_upload: the bucket %s cannot be used: %s", self.cfg.s3.bucket, problem)

    def _certificate(self) -> tuple[Path, Path]:
        """The listener's certificate and key: its own, else the node's (configured, or the
        self-signed pair the node made in ``data_dir/tls``, which names ``*.<domain>`` too)."""
        if self.cfg.cert_file is not None and self.cfg.key_file is not None:
            return self.cfg.cert_file, self.cfg.key_file
        node = self.host.settings
        if node.tls.cert_file and node.tls.key_file:
            return node.tls.cert_file, node.tls.key_file
        return node.data_dir / "tls" / "cert.pem", node.data_dir / "tls" / "key.pem"

    def status(self) -> dict[str, Any]:
        http = self.server.counters if self.server is not None else {}
        return {**self.counters, **{f"http_{k}": v for k, v in http.items()}}

    def base_url(self, domain: str) -> str:
        if self.cfg.public_url:
            return self.cfg.public_url.format(domain=domain)
        return f"{'https' if self.cfg.tls else 'http'}://{domain}:{self.cfg.port}"

    # -- clean-up ---------------------------------------------------------------------------------------

    async def clean_up(self, now: float | None = None) -> int:
        """Remove the files older than ``expire_after`` and the quota log out of the window; how
        many files went."""
        now = time.time() if now is None else now
        removed = 0
        if self.cfg.expire_after > 0 and self.cleans_store():
            removed = await self.store.expire(now - self.cfg.expire_after)
            self.counters["expired"] += removed
            if removed:
                log.info("http_upload: %d files older than %d s removed", removed, self.cfg.expire_after)
        await self.slot_log.forget(now - self.cfg.quota_window)
        return removed

    def cleans_store(self) -> bool:
        """Whether this node removes the expired files: with the disk store, every node (the
        removal of a directory is idempotent, the runs are spread by :meth:`ModuleHost.every`'s
        jitter); with a bucket, only the region's member with the lowest name among those joined
        (as the cluster picks who speaks for a member that left), so the bucket is listed once per
        interval, not once per node."""
        if self.bucket is None:
            return True
        return min([self.host.node, *self.host.cluster_members]) == self.host.node

    # -- the service ------------------------------------------------------------------------------------

    def _items(self, items: list[dict[str, str]], to: Any) -> list[dict[str, str]]:
        """``disco_server_items``: our service among the server's items."""
        domain = str(to)
        return items + [{"jid": s, "name": "HTTP File Upload"} for s, d in self.services.items() if d == domain]

    async def _route(self, stanza: Stanza, to: Jid) -> bool | None:
        """``route_remote``: take what is addressed to one of our services."""
        domain = self.services.get(to.domain)
        if domain is None:
            return None
        if stanza.name == "iq":
            if stanza.type in ("get", "set"):
                await self._iq(stanza, to, domain)
            return True  # results and errors to the service end here
        if stanza.name == "message" and stanza.type not in ("error", "groupchat", "headline"):
            self.host.send_error(stanza, errors.ServiceUnavailable())
        return True  # presence: nothing to do

    async def _iq(self, stanza: Stanza, to: Jid, domain: str) -> None:
        payload = stanza.payload()
        try:
            if to.local is not None or to.resource is not None or payload is None:
                raise errors.ServiceUnavailable()
            if payload.tag == INFO + "query" and stanza.type == "get":
                result: ET.Element | None = self._info(payload)
            elif payload.tag == ITEMS + "query" and stanza.type == "get":
                if payload.get("node"):
                    raise errors.ItemNotFound()
                result = ET.Element(ITEMS + "query")
            elif payload.tag == f"{{{ns.PING}}}ping" and stanza.type == "get":
                result = None
            elif payload.tag == f"{{{NS}}}request" and stanza.type == "get":
                result = await self._slot(stanza, payload, domain)
            else:
                raise errors.ServiceUnavailable()
        except StanzaError as e:
            self.host.send_error(stanza, e)
            return
        except SlotRefused as e:
            self.counters["refused"] += 1
            self._refuse(stanza, e)
            return
        self._reply(stanza, to, result)

    def _info(self, payload: ET.Element) -> ET.Element:
        if payload.get("node"):
            raise errors.ItemNotFound()
        q = ET.Element(INFO + "query")
        ET.SubElement(q, INFO + "identity", {"category": "store", "type": "file", "name": "HTTP File Upload"})
        for feature in sorted((ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, NS)):
            ET.SubElement(q, INFO + "feature", {"var": feature})
        q.append(info_form(self.cfg.max_file_size))
        return q

    async def _slot(self, stanza: Stanza, payload: ET.Element, domain: str) -> ET.Element:
        try:
            sender = Jid.parse(stanza.from_ or "")
        except InvalidJid:
            raise errors.BadRequest() from None
        if sender.local is None or sender.domain != domain:
            raise errors.NotAllowed(f"uploads are for accounts of {domain}")
        request = parse_request(payload, self.cfg.max_file_size)
        now = time.time()
        slot = new_slot(request, now, self.cfg.slot_ttl)

        def check(granted: list[tuple[float, int]]) -> None:
            quota_retry(granted, request.size, self.cfg.quota, self.cfg.quota_window, now)

        if self.cfg.quota > 0:
            await self.slot_log.reserve(sender.bare, slot.token, request.size, now, now - self.cfg.quota_window, check)
        if self.bucket is not None:
            try:
                put, get = await self.bucket.put_url(slot, self.cfg.slot_ttl), await self.bucket.get_url(slot, domain)
            except Exception as e:  # no credentials found, an instance role that did not answer…
                log.warning("http_upload: no S3 URL could be signed: %s: %s", e.__class__.__name__, e)
                raise errors.StanzaInternalServerError() from None
            self.counters["slots"] += 1
            return slot_element(put, get)
        self.counters["slots"] += 1
        base = self.base_url(domain)
        return slot_element(put_url(base, slot, self.signer), get_url(base, slot))

    def _reply(self, request: Stanza, to: Jid, payload: ET.Element | None) -> None:
        el = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "result", "from": str(to), "to": request.from_ or ""})
        if request.id is not None:
            el.set("id", request.id)
        if payload is not None:
            el.append(payload)
        self.host.route_nowait(Stanza(el))

    def _refuse(self, stanza: Stanza, refused: SlotRefused) -> None:
        """The IQ error of a refused slot, with XEP-0363's own child where it has one."""
        extra: ET.Element | None = None
        error: StanzaError
        if isinstance(refused, FileTooLarge):
            self.host.refused("modules.http_upload.max_file_size")
            error, extra = errors.NotAcceptable(str(refused)), too_large_element(refused.max_size)
        elif isinstance(refused, QuotaExceeded):
            self.host.refused("modules.http_upload.quota")
            error = errors.StanzaResourceConstraint(str(refused))
            extra = retry_element(refused.retry_at) if refused.retry_at is not None else None
        elif isinstance(refused, BadSlotRequest):
            error = errors.BadRequest(str(refused))
        else:
            error = errors.NotAcceptable(str(refused))
        if not stanza.from_:
            return
        reply = stanza.error_reply(error)
        if extra is not None:
            for child in reply.element:
                if child.tag.endswith("}error"):
                    child.append(extra)
        self.host.route_nowait(reply)
