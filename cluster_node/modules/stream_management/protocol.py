"""XEP-0198 Stream Management, sans-IO: parse client nonzas, build server nonzas, keep the counters and queue.

Nothing here reads a clock or touches a socket: times come in as floats and bytes go out as return
values, so the adapter decides when to write and the whole protocol is testable as plain function calls.

Counters follow XEP-0198 §4: ``h`` counts stanzas, modulo 2**32.  The server keeps two of them:
``handled_in`` (stanzas received from the client, reported in ``<a/>``) and ``sent_out`` (stanzas written
to the client, acknowledged by the client's ``<a/>``).  The i-th stanza written after the counter
stood at ``n`` has sequence number ``n + i`` (mod 2**32) and is acknowledged by any ``h`` at or past it.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from typing import Any

from ...xmpp import ns
from ...xmpp.stanza import escape_attr, escape_text

__all__ = [
    "NS", "FEATURE", "MOD", "MAX_H", "MAX_ID_LEN", "STANZA_CONDITIONS",
    "SmError", "Enable", "Resume",
    "parse_enable", "parse_resume", "parse_ack",
    "enabled", "resumed", "failed", "ack", "request", "handled_count_too_high", "stream_error_too_high",
    "SmSession", "make_resume_id", "split_resume_id", "effective_max",
]

NS = "urn:xmpp:sm:3"
FEATURE = b"<sm xmlns='urn:xmpp:sm:3'/>"
MOD = 2**32
MAX_H = MOD - 1
MAX_ID_LEN = 256  # the longest previd accepted from a client, so the ids we hand out must fit too
STATE_VERSION = 1

STANZA_CONDITIONS = frozenset({
    "bad-request", "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
    "item-not-found", "jid-malformed", "not-acceptable", "not-allowed", "not-authorized", "policy-violation",
    "recipient-unavailable", "redirect", "registration-required", "remote-server-not-found",
    "remote-server-timeout", "resource-constraint", "service-unavailable", "subscription-required",
    "undefined-condition", "unexpected-request",
})  # RFC 6120 §8.3.3: the only names <failed/> may carry, so a typo cannot reach the wire

_TAG_ENABLE = f"{{{NS}}}enable"
_TAG_RESUME = f"{{{NS}}}resume"
_TAG_A = f"{{{NS}}}a"
_DIGITS = re.compile(r"[0-9]+")
_XML_SPACE = " \t\r\n"  # xs:unsignedInt collapses whitespace, so " 5 " is a valid h
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_B64_ID = 4 * MAX_ID_LEN  # bound on untrusted input before decoding it


class SmError(Exception):
    """A stream management request that cannot be honoured; the adapter answers ``<failed/>`` or closes.

    ``condition`` is an RFC 6120 stanza error condition; ``h`` is the server's ``handled_in`` to report
    in ``<failed h='…'/>``.  For an ``h`` larger than what was sent, ``client_h`` and ``send_count``
    carry what :func:`stream_error_too_high` needs.
    """

    def __init__(self, condition: str, text: str | None = None, *, h: int | None = None,
                 client_h: int | None = None, send_count: int | None = None) -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.h = h
        self.client_h = client_h
        self.send_count = send_count

    def to_failed(self) -> bytes:
        """The ``<failed/>`` nonza answering the request that raised this."""
        return failed(self.condition, self.h, self.text)


@dataclass(frozen=True, slots=True)
class Enable:
    """A client's ``<enable/>``: whether it wants resumption and its preferred resume timeout in seconds."""

    resume: bool
    max: int | None


@dataclass(frozen=True, slots=True)
class Resume:
    """A client's ``<resume/>``: the id of the session to resume and how many stanzas the client handled."""

    previd: str
    h: int


# -- parsing ------------------------------------------------------------------------------------------


def _check_tag(el: ET.Element, tag: str) -> None:
    if el.tag != tag:
        raise SmError("bad-request", f"expected {tag}, got {el.tag}")


def _uint32(value: str | None, name: str) -> int:
    """An xs:unsignedInt attribute; digits only, so '-1', '+1', '1e3' and '٣' are all refused."""
    if value is None:
        raise SmError("bad-request", f"missing '{name}'")
    s = value.strip(_XML_SPACE)
    if not _DIGITS.fullmatch(s):
        raise SmError("bad-request", f"'{name}' is not a non-negative integer")
    s = s.lstrip("0") or "0"
    if len(s) > 10 or int(s) > MAX_H:  # length first: int() of a huge string is slow (and capped by Python)
        raise SmError("bad-request", f"'{name}' is larger than 2^32-1")
    return int(s)


def _boolean(value: str | None, name: str) -> bool:
    if value is None:
        return False
    s = value.strip(_XML_SPACE)
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise SmError("bad-request", f"'{name}' is not a boolean")


def parse_enable(el: ET.Element) -> Enable:
    """``<enable resume='true' max='300'/>``: ``max`` must be a positive number of seconds."""
    _check_tag(el, _TAG_ENABLE)
    resume = _boolean(el.get("resume"), "resume")
    raw_max = el.get("max")
    max_ = None
    if raw_max is not None:
        max_ = _uint32(raw_max, "max")
        if max_ == 0:
            raise SmError("bad-request", "'max' must be positive")
    return Enable(resume=resume, max=max_)


def parse_resume(el: ET.Element) -> Resume:
    """``<resume previd='…' h='…'/>``; previd is bounded so a client cannot make us hash or look up megabytes."""
    _check_tag(el, _TAG_RESUME)
    previd = el.get("previd")
    if not previd:
        raise SmError("bad-request", "missing 'previd'")
    if len(previd) > MAX_ID_LEN:
        raise SmError("bad-request", "'previd' is too long")
    return Resume(previd=previd, h=_uint32(el.get("h"), "h"))


def parse_ack(el: ET.Element) -> int:
    """``<a h='…'/>``: the number of stanzas the client has handled."""
    _check_tag(el, _TAG_A)
    return _uint32(el.get("h"), "h")


# -- building -------------------------------------------------------------------------------------------


def _check_h(h: int) -> None:
    if not 0 <= h <= MAX_H:
        raise ValueError(f"h out of range: {h}")


def enabled(id: str | None, resume: bool, max: int | None = None, location: str | None = None) -> bytes:
    """``<enabled/>``; a resumable session needs an id, otherwise the client could never name it."""
    if resume and not id:
        raise ValueError("a resumable session needs an id")
    attrs = [f"xmlns='{NS}'"]
    if id:
        attrs.append(f"id='{escape_attr(id)}'")
    if resume:
        attrs.append("resume='true'")
    if max is not None:
        if max <= 0:
            raise ValueError(f"max must be positive: {max}")
        attrs.append(f"max='{max:d}'")
    if location:
        attrs.append(f"location='{escape_attr(location)}'")
    return f"<enabled {' '.join(attrs)}/>".encode()


def resumed(previd: str, h: int) -> bytes:
    """``<resumed/>``: tells the client which of its stanzas arrived, so it resends only the rest."""
    _check_h(h)
    return f"<resumed xmlns='{NS}' previd='{escape_attr(previd)}' h='{h:d}'/>".encode()


def failed(condition: str, h: int | None = None, text: str | None = None) -> bytes:
    """``<failed/>`` with a stanza error condition; ``h`` lets a client whose resume failed ack its queue."""
    if condition not in STANZA_CONDITIONS:
        raise ValueError(f"not an RFC 6120 stanza error condition: {condition!r}")
    h_attr = ""
    if h is not None:
        _check_h(h)
        h_attr = f" h='{h:d}'"
    text_el = f"<text xmlns='{ns.STANZAS}'>{escape_text(text)}</text>" if text else ""
    return f"<failed xmlns='{NS}'{h_attr}><{condition} xmlns='{ns.STANZAS}'/>{text_el}</failed>".encode()


def ack(h: int) -> bytes:
    """``<a h='…'/>``: the answer to the client's ``<r/>``."""
    _check_h(h)
    return f"<a xmlns='{NS}' h='{h:d}'/>".encode()


def request() -> bytes:
    """``<r/>``: asks the client how many of our stanzas it handled."""
    return f"<r xmlns='{NS}'/>".encode()


def handled_count_too_high(h: int, send_count: int) -> bytes:
    """The application-specific child of the stream error for an ``h`` past what we sent (XEP-0198 §6)."""
    _check_h(h)
    _check_h(send_count)
    return f"<handled-count-too-high xmlns='{NS}' h='{h:d}' send-count='{send_count:d}'/>".encode()


def stream_error_too_high(h: int, send_count: int) -> bytes:
    """The whole ``<stream:error/>`` (prefix bound by the stream header, as in ``errors.StreamError``)."""
    return (f"<stream:error><undefined-condition xmlns='{ns.STREAMS}'/>".encode()
            + handled_count_too_high(h, send_count) + b"</stream:error>")


# -- session state ----------------------------------------------------------------------------------------


class SmSession:
    """Counters and the unacknowledged-stanza queue of one stream with stream management enabled.

    Truthy even with an empty queue (``len()`` counts unacked stanzas), so ``if session:`` means "SM on".
    """

    def __init__(self, *, id: str | None = None, resume: bool = False, max: int | None = None,
                 ack_every: int = 5, ack_after: float = 30.0, max_queue: int = 1000,
                 handled_in: int = 0, sent_out: int = 0) -> None:
        if ack_every < 1:
            raise ValueError("ack_every must be at least 1")
        if not ack_after > 0:
            raise ValueError("ack_after must be positive")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        _check_h(handled_in)
        _check_h(sent_out)
        self.id = id
        self.resume = resume
        self.max = max
        self.ack_every = ack_every
        self.ack_after = ack_after
        self.max_queue = max_queue
        self.handled_in = handled_in
        self._sent_out = sent_out
        self._acked_out = sent_out  # the last h the client acknowledged
        # How far back an h may lie and still be an old ack rather than garbage: no further than the
        # stanzas ever acknowledged, and under half the ring so "behind" and "ahead" never overlap.
        self._acked_total = 0
        self._queue: deque[tuple[bytes, float | None]] = deque()  # (stanza, when sent); None: unknown
        self._request_pending = False
        self._since_request = 0

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return (f"SmSession(id={self.id!r}, handled_in={self.handled_in}, sent_out={self._sent_out}, "
                f"acked_out={self._acked_out}, unacked={len(self._queue)})")

    @property
    def sent_out(self) -> int:
        """Stanzas written to the client, modulo 2**32 (the 'send-count' of XEP-0198 §6)."""
        return self._sent_out

    @property
    def acked_out(self) -> int:
        """The last ``h`` the client acknowledged."""
        return self._acked_out

    @property
    def overflow(self) -> bool:
        """More unacked stanzas than ``max_queue``: the client does not ack; store the queue and close."""
        return len(self._queue) > self.max_queue

    @property
    def request_pending(self) -> bool:
        """An ``<r/>`` went out and no ``<a/>`` answered it yet."""
        return self._request_pending

    # inbound

    def received(self) -> int:
        """Count one stanza handled from the client; returns the new ``h``."""
        self.handled_in = (self.handled_in + 1) % MOD
        return self.handled_in

    def ack_reply(self) -> bytes:
        """The ``<a/>`` answering the client's ``<r/>``."""
        return ack(self.handled_in)

    # outbound

    def sent(self, data: bytes, now: float) -> bool:
        """Queue a stanza written to the client; True when the adapter should now write ``<r/>``."""
        self._sent_out = (self._sent_out + 1) % MOD
        self._queue.append((data, now))
        self._since_request += 1
        if self._since_request >= self.ack_every or (not self._request_pending and self._oldest_due(now)):
            self._mark_requested()
            return True
        return False

    def request_due(self, now: float) -> bool:
        """For a timer: True (and the request counted as sent) when the oldest unacked stanza waited too long."""
        if self._request_pending or not self._oldest_due(now):
            return False
        self._mark_requested()
        return True

    def _oldest_due(self, now: float) -> bool:
        if not self._queue:
            return False
        oldest = self._queue[0][1]
        return oldest is not None and now - oldest >= self.ack_after

    def _mark_requested(self) -> None:
        self._request_pending = True
        self._since_request = 0

    def acked(self, h: int) -> int:
        """Apply the client's ``<a h='…'/>``; returns how many stanzas it newly acknowledged (0 for an old ack).

        Raises ``SmError('undefined-condition')`` when ``h`` acknowledges more than was sent (XEP-0198 §6).
        """
        _check_h(h)
        ahead = (h - self._acked_out) % MOD
        if ahead <= len(self._queue):
            for _ in range(ahead):
                self._queue.popleft()
            self._acked_out = h
            self._acked_total = min(self._acked_total + ahead, MOD // 2 - 1)
            self._request_pending = False
            return ahead
        behind = (self._acked_out - h) % MOD
        if behind <= self._acked_total:
            return 0  # an old ack overtaken by a newer one: nothing to learn from it
        raise SmError("undefined-condition",
                      f"h={h} acknowledges more than the {self._sent_out} stanzas sent",
                      h=self.handled_in, client_h=h, send_count=self._sent_out)

    def unacked(self) -> list[bytes]:
        """The stanzas the client has not acknowledged, oldest first."""
        return [data for data, _ in self._queue]

    def resume_from(self, h: int, now: float | None = None) -> list[bytes]:
        """Apply the ``h`` of a client's ``<resume/>``; returns the stanzas to write again, in order.

        They stay queued under their original sequence numbers: the client never counted them, so its
        ``h`` advances over them as it handles the resent copies.  The old stream's ``<r/>`` is void.
        """
        self.acked(h)
        self._request_pending = False
        self._since_request = 0
        if now is not None:
            self._queue = deque((data, now) for data, _ in self._queue)
        return self.unacked()

    # moving between nodes

    def to_state(self) -> dict[str, Any]:
        """A JSON-serializable snapshot for another cluster node; send times are local, so they stay here."""
        return {
            "version": STATE_VERSION,
            "id": self.id,
            "resume": self.resume,
            "max": self.max,
            "handled_in": self.handled_in,
            "sent_out": self._sent_out,
            "acked_out": self._acked_out,
            "acked_total": self._acked_total,
            "unacked": [base64.b64encode(data).decode("ascii") for data, _ in self._queue],
        }

    @classmethod
    def from_state(cls, d: object, *, ack_every: int = 5, ack_after: float = 30.0,
                   max_queue: int = 1000) -> SmSession:
        """Rebuild a session from :meth:`to_state`; ``ValueError`` on anything malformed (it came off the network)."""
        if not isinstance(d, dict):
            raise ValueError("state is not an object")
        if _get(d, "version", int) != STATE_VERSION:
            raise ValueError("unsupported state version")
        id_ = _get_opt(d, "id", str)
        if id_ is not None and not 0 < len(id_) <= MAX_ID_LEN:
            raise ValueError("bad 'id'")
        resume = _get(d, "resume", bool)
        if resume and id_ is None:
            raise ValueError("a resumable session needs an 'id'")
        max_ = _get_opt(d, "max", int)
        if max_ is not None and not 0 < max_ <= MAX_H:
            raise ValueError("bad 'max'")
        handled_in = _get_counter(d, "handled_in")
        sent_out = _get_counter(d, "sent_out")
        acked_out = _get_counter(d, "acked_out")
        acked_total = _get(d, "acked_total", int)
        if acked_total < 0:
            raise ValueError("bad 'acked_total'")
        raw = _get(d, "unacked", list)
        if len(raw) != (sent_out - acked_out) % MOD:
            raise ValueError("'unacked' does not match the counters")
        queue: list[bytes] = []
        for item in raw:
            if not isinstance(item, str):
                raise ValueError("'unacked' holds a non-string")
            try:
                queue.append(base64.b64decode(item.encode("ascii"), validate=True))
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise ValueError("'unacked' holds invalid base64") from exc
        s = cls(id=id_, resume=resume, max=max_, ack_every=ack_every, ack_after=ack_after, max_queue=max_queue,
                handled_in=handled_in, sent_out=sent_out)
        s._acked_out = acked_out
        s._acked_total = min(acked_total, MOD // 2 - 1)
        s._queue = deque((data, None) for data in queue)
        return s


def _get(d: dict[Any, Any], key: str, typ: type) -> Any:
    if key not in d:
        raise ValueError(f"missing {key!r}")
    value = d[key]
    # bool is an int subclass: True must not pass for a counter, nor 1 for a flag
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ValueError(f"{key!r} is not {typ.__name__}")
    return value


def _get_opt(d: dict[Any, Any], key: str, typ: type) -> Any:
    if key not in d:
        raise ValueError(f"missing {key!r}")
    return None if d[key] is None else _get(d, key, typ)


def _get_counter(d: dict[Any, Any], key: str) -> int:
    value: int = _get(d, key, int)
    if not 0 <= value <= MAX_H:
        raise ValueError(f"{key!r} out of range")
    return value


# -- resume ids and timeouts -------------------------------------------------------------------------------


def make_resume_id(full_jid: str, token: str) -> str:
    """The previd handed out in ``<enabled id='…'/>``: any node can find the session by its full JID.

    The token (compared with ``hmac.compare_digest``) is what makes the id unguessable; it must not
    contain '.' because the JID may.  Raises ``ValueError`` when the id would exceed ``MAX_ID_LEN``
    (a very long JID): offer the session without resumption then.
    """
    if not full_jid or not token or "." in token:
        raise ValueError("need a full JID and a non-empty token without '.'")
    previd = base64.urlsafe_b64encode(f"{full_jid}.{token}".encode()).decode("ascii").rstrip("=")
    if len(previd) > MAX_ID_LEN:
        raise ValueError("resume id too long")
    return previd


def split_resume_id(previd: str) -> tuple[str, str] | None:
    """``(full_jid, token)`` from a client's previd, or None for anything we could not have issued."""
    if not isinstance(previd, str) or len(previd) > _MAX_B64_ID or not _B64URL.fullmatch(previd):
        return None
    try:
        text = base64.urlsafe_b64decode(previd + "=" * (-len(previd) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    full_jid, dot, token = text.rpartition(".")
    if not dot or not full_jid or not token:
        return None
    # non-canonical encodings (stray bits in the last character) name the same session: refuse them
    if base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=") != previd:
        return None
    return full_jid, token


def effective_max(requested: int | None, default: int, cap: int) -> int:
    """The resume timeout in seconds: the client's ``max`` if it asked, never above ``cap``; else ``default``."""
    if requested is None:
        return default
    return min(requested, cap)
