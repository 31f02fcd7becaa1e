"""XEP-0363 slots, sans-IO: what a slot request may ask, the signed PUT URL it gets, and the checks
an HTTP PUT must pass.  No I/O and no clock of its own (``now`` is always an argument).

* **Slot requests.**  ``<request xmlns='urn:xmpp:http:upload:0' filename size [content-type]/>``:
  the file name is one path segment (no ``/`` or ``\\``, not ``.`` or ``..``, no control
  characters, at most :data:`MAX_FILENAME` characters), the size a plain decimal number
  (:class:`FileTooLarge` over the service's maximum), the content type a MIME type.
* **URLs.**  A slot is a random token (the unguessable part: 144 bits) and the file name:
  ``<base>/upload/<token>/<filename>`` is the GET URL; the PUT URL adds
  ``?size=…&type=…&expires=…&sig=…`` where ``sig`` is an HMAC-SHA256 (key: :func:`derive_key`)
  over token, file name, size, content type and expiry.  Any node holding the key checks a PUT:
  nothing is remembered between the slot and the upload.
* **PUT checks** (:func:`check_put`): a bad or missing signature, or an expired one, is 403; a
  Content-Length other than the slot's size is 400 (413 when larger); a Content-Type other than
  the requested one is 400.
* **Quota** (:func:`quota_retry`): the bytes a user was given slots for over a sliding window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

__all__ = [
    "NS", "MAX_FILENAME", "MAX_CONTENT_TYPE", "SlotRefused", "BadSlotRequest", "FileTooLarge", "QuotaExceeded",
    "PutRefused", "SlotRequest", "Slot", "Signer", "derive_key", "parse_request", "check_filename",
    "check_content_type", "new_token", "valid_token", "new_slot", "put_url", "get_url", "check_put",
    "quota_retry", "slot_element", "info_form", "too_large_element", "retry_element",
]

NS = "urn:xmpp:http:upload:0"
U = f"{{{NS}}}"
DATA = "jabber:x:data"
X = f"{{{DATA}}}"

MAX_FILENAME = 255  # characters of a file name (one path segment)
MAX_CONTENT_TYPE = 255
_SIZE = re.compile(r"^[0-9]{1,20}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_TCHAR = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # RFC 9110 token
_CONTENT_TYPE = re.compile(
    rf"^{_TCHAR}/{_TCHAR}(?:[ \t]*;[ \t]*{_TCHAR}=(?:{_TCHAR}|\"[^\"\\\x00-\x1f\x7f]*\"))*$")
_KEY_LABEL = b"meridian http_upload v1"


# -- errors -----------------------------------------------------------------------------------------


class SlotRefused(Exception):
    """A slot request that gets no slot (the module turns it into the IQ error)."""


class BadSlotRequest(SlotRefused):
    """bad-request: a malformed request, an unsafe file name, a bad size or content type."""


class FileTooLarge(SlotRefused):
    """not-acceptable with ``<file-too-large><max-file-size>N</max-file-size></file-too-large>``."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"the file is {size} bytes; at most {max_size} bytes may be uploaded")
        self.size = size
        self.max_size = max_size


class QuotaExceeded(SlotRefused):
    """resource-constraint (wait) with ``<retry stamp='…'/>`` when waiting helps."""

    def __init__(self, retry_at: float | None) -> None:
        super().__init__("upload quota exceeded" + (", try again later" if retry_at is not None else ""))
        self.retry_at = retry_at


class PutRefused(Exception):
    """An HTTP PUT that may not store its body: the HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# -- requests and slots -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotRequest:
    filename: str
    size: int
    content_type: str  # "" when the request named none


@dataclass(frozen=True, slots=True)
class Slot:
    token: str
    filename: str
    size: int
    content_type: str
    expires: int  # unix time after which the PUT URL is refused

    @property
    def path(self) -> str:
        """The URL path of the file (percent-encoded)."""
        return f"/upload/{self.token}/{quote(self.filename, safe='')}"


def check_filename(name: str) -> str:
    """The file name if it is one safe path segment (BadSlotRequest otherwise)."""
    if not name or not name.strip():
        raise BadSlotRequest("the file name is empty")
    if len(name) > MAX_FILENAME:
        raise BadSlotRequest(f"the file name is longer than {MAX_FILENAME} characters")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise BadSlotRequest("the file name must be a name, not a path")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") or c in "\u2028\u2029" for c in name):
        raise BadSlotRequest("the file name has control or unassigned characters")
    return name


def check_content_type(value: str) -> str:
    """A MIME type (``type/subtype`` with parameters), or "" (BadSlotRequest otherwise)."""
    value = value.strip()
    if not value:
        return ""
    if len(value) > MAX_CONTENT_TYPE or not _CONTENT_TYPE.match(value):
        raise BadSlotRequest(f"{value[:64]!r} is not a content type")
    return value


def parse_request(el: ET.Element, max_size: int) -> SlotRequest:
    """Check a ``<request/>`` element (its attributes, the XEP-0363 0.3+ form)."""
    if el.tag != U + "request":
        raise BadSlotRequest("expected <request xmlns='urn:xmpp:http:upload:0'/>")
    filename = check_filename(el.get("filename", ""))
    raw = el.get("size")
    if raw is None or not _SIZE.match(raw):
        raise BadSlotRequest("'size' must be the file's length in bytes (a non-negative integer)")
    size = int(raw)
    if size > max_size:
        raise FileTooLarge(size, max_size)
    return SlotRequest(filename, size, check_content_type(el.get("content-type", "")))


def new_token() -> str:
    """The unguessable part of a file's URL (18 random bytes, base64url: 24 characters)."""
    return secrets.token_urlsafe(18)


def valid_token(token: str) -> bool:
    return bool(_TOKEN.match(token))


def new_slot(request: SlotRequest, now: float, ttl: int, token: str | None = None) -> Slot:
    return Slot(token or new_token(), request.filename, request.size, request.content_type, int(now) + ttl)


# -- signatures ---------------------------------------------------------------------------------------


def derive_key(secret: str, cluster_secret: str = "") -> bytes:
    """The HMAC key: from the module's own secret, else from the cluster's (every member of a
    region derives the same key, so any of them checks a PUT URL another one signed).  Empty
    when there is neither (the caller makes and keeps a random one)."""
    base = secret or cluster_secret
    if not base:
        return b""
    return hmac.new(base.encode(), _KEY_LABEL, hashlib.sha256).digest()


class Signer:
    """HMAC-SHA256 over what a PUT may store: token, file name, size, content type, expiry."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the signing key needs at least 16 bytes")
        self._key = key

    def sign(self, token: str, filename: str, size: int, content_type: str, expires: int) -> str:
        msg = "\n".join(("put", token, filename, str(size), content_type, str(expires))).encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, slot: Slot, sig: str) -> bool:
        expected = self.sign(slot.token, slot.filename, slot.size, slot.content_type, slot.expires)
        return hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))


def put_url(base: str, slot: Slot, signer: Signer) -> str:
    query = {"size": str(slot.size), "type": slot.content_type, "expires": str(slot.expires),
             "sig": signer.sign(slot.token, slot.filename, slot.size, slot.content_type, slot.expires)}
    return f"{base.rstrip('/')}{slot.path}?{urlencode(query)}"


def get_url(base: str, slot: Slot) -> str:
    return f"{base.rstrip('/')}{slot.path}"


def check_put(signer: Signer, token: str, filename: str, query: Mapping[str, str], now: float,
              content_length: int | None, content_type: str | None) -> Slot:
    """The slot a PUT to ``/upload/<token>/<filename>?<query>`` may fill, or PutRefused."""
    size, ctype, expires, sig = (query.get(k) for k in ("size", "type", "expires", "sig"))
    if (not valid_token(token) or size is None or not _SIZE.match(size) or ctype is None
            or expires is None or not _SIZE.match(expires) or not sig):
        raise PutRefused(403, "not a valid upload URL")
    slot = Slot(token, filename, int(size), ctype, int(expires))
    if not signer.verify(slot, sig):
        raise PutRefused(403, "bad signature")
    if now > slot.expires:
        raise PutRefused(403, "the upload slot expired")
    if content_length is None:
        raise PutRefused(400, "Content-Length is required")
    if content_length > slot.size:
        raise PutRefused(413, f"the slot is for {slot.size} bytes")
    if content_length != slot.size:
        raise PutRefused(400, f"the slot is for {slot.size} bytes")
    if slot.content_type and (content_type or "").strip().lower() != slot.content_type.lower():
        raise PutRefused(400, f"the slot is for Content-Type {slot.content_type}")
    return slot


# -- quota --------------------------------------------------------------------------------------------


def quota_retry(granted: Iterable[tuple[float, int]], size: int, quota: int, window: int,
                now: float) -> None:
    """Raise QuotaExceeded when a slot of ``size`` bytes would take the user over ``quota`` bytes
    in the ``window`` seconds before ``now``; ``granted`` are the (time, size) of the slots the user
    was given.  ``quota`` 0: no quota."""
    if quota <= 0:
        return
    if size > quota:
        raise QuotaExceeded(None)
    recent = sorted((t, s) for t, s in granted if t > now - window)
    used = sum(s for _, s in recent)
    if used + size <= quota:
        return
    # The earliest moment enough of the oldest slots left the window.
    for t, s in recent:
        used -= s
        if used + size <= quota:
            raise QuotaExceeded(t + window)
    raise QuotaExceeded(now + window)  # unreachable: size <= quota frees once every slot left


# -- XML ------------------------------------------------------------------------------------------------


def slot_element(put: str, get: str) -> ET.Element:
    slot = ET.Element(U + "slot")
    ET.SubElement(slot, U + "put", {"url": put})
    ET.SubElement(slot, U + "get", {"url": get})
    return slot


def info_form(max_size: int) -> ET.Element:
    """The XEP-0128 form of the service's disco#info: ``max-file-size``."""
    x = ET.Element(X + "x", {"type": "result"})
    field = ET.SubElement(x, X + "field", {"var": "FORM_TYPE", "type": "hidden"})
    ET.SubElement(field, X + "value").text = NS
    field = ET.SubElement(x, X + "field", {"var": "max-file-size"})
    ET.SubElement(field, X + "value").text = str(max_size)
    return x


def too_large_element(max_size: int) -> ET.Element:
    el = ET.Element(U + "file-too-large")
    ET.SubElement(el, U + "max-file-size").text = str(max_size)
    return el


def retry_element(at: float) -> ET.Element:
    stamp = datetime.fromtimestamp(int(at) + 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ET.Element(U + "retry", {"stamp": stamp})
