"""XEP-0313 Message Archive Management without I/O: what is archived, archive ids, the parsing of
queries (data form, XEP-0059 RSM, ``<flip-page/>``) and preferences (XEP-0441), and the building
of results, ``<fin/>``, metadata and XEP-0359 ``<stanza-id/>``.

Everything here is a pure function of its arguments (time and randomness passed in), so it is
tested exhaustively without a node.  Bad input raises the :class:`~cluster_node.xmpp.errors.StanzaError`
XEP-0313 names: ``bad-request`` for malformed values, ``feature-not-implemented`` for a field or
an RSM ``<index/>`` we do not support.

**Archive ids** are 63-bit integers written in decimal: the archiving time in microseconds since
the Unix epoch in the high 52 bits (enough until the year 2112), 11 random bits below.  They sort
by time, need no coordination between the nodes and regions that write one archive (a collision —
the same microsecond and the same random bits in one archive — is detected by the primary key and
retried with new bits), and a time range is an id range, so ``start``/``end`` use the same index
as paging.
"""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza

__all__ = [
    "MAM", "MAM_EXTENDED", "RSM", "FORWARD", "SID", "HINTS", "XDATA", "MODES",
    "RANDOM_BITS", "make_id", "id_time", "parse_id", "IdGenerator",
    "archivable", "peer_of", "Prefs", "decide", "parse_prefs", "prefs_element",
    "Filters", "Query", "parse_query", "query_form", "Page", "fin_element", "result_message",
    "metadata_element", "with_stanza_id", "without_forged_ids", "claimed_id", "client_stanza",
    "format_stamp", "parse_stamp",
]

MAM = "urn:xmpp:mam:2"
MAM_EXTENDED = "urn:xmpp:mam:2#extended"
RSM = "http://jabber.org/protocol/rsm"  # XEP-0059
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
SID = "urn:xmpp:sid:0"  # XEP-0359
HINTS = "urn:xmpp:hints"  # XEP-0334
XDATA = "jabber:x:data"  # XEP-0004
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"  # XEP-0122
MODES = ("always", "never", "roster")
_OTHER_CONTENT = (ns.SERVER, "jabber:component:accept")  # stanza namespaces other than jabber:client

RANDOM_BITS = 11
TS_BITS = 63 - RANDOM_BITS
MAX_TS = (1 << TS_BITS) - 1
_RANDOM_MASK = (1 << RANDOM_BITS) - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_US = datetime.timedelta(microseconds=1)
_DIGITS = re.compile(r"[0-9]{1,19}")
# XEP-0082 DateTime: CCYY-MM-DDThh:mm:ss[.sss]TZD
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")

# -- ids and time ------------------------------------------------------------------------------------


def make_id(ts_us: int, rand: int) -> int:
    """The archive id of a message archived at ``ts_us`` (µs since the epoch)."""
    return (min(max(ts_us, 0), MAX_TS) << RANDOM_BITS) | (rand & _RANDOM_MASK)


def id_time(archive_id: int) -> int:
    """The archiving time (µs) an id carries."""
    return archive_id >> RANDOM_BITS


def parse_id(value: str | None) -> int:
    """An archive id from a client: ``bad-request`` unless it is one of ours in form."""
    text = (value or "").strip()
    if not _DIGITS.fullmatch(text) or int(text) >= 1 << 63:
        raise errors.BadRequest(f"not an archive id: {value!r}")
    return int(text)


class IdGenerator:
    """Ids of one process: the time never goes back, so one writer's ids strictly increase."""

    def __init__(self) -> None:
        self.last_ts = 0

    def next(self, now_us: int, rand: int) -> tuple[int, int]:
        """(archive id, its time in µs)."""
        ts = max(now_us, self.last_ts + 1)
        self.last_ts = ts
        return make_id(ts, rand), ts


def format_stamp(ts_us: int) -> str:
    """XEP-0082 DateTime (UTC, microseconds)."""
    return (_EPOCH + ts_us * _US).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(value: str | None) -> int:
    """µs since the epoch of a XEP-0082 DateTime; ``bad-request`` for anything else."""
    text = (value or "").strip()
    if not _DATETIME.fullmatch(text):
        raise errors.BadRequest(f"not a XEP-0082 DateTime: {value!r}")
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise errors.BadRequest(f"not a valid date and time: {value!r}") from None
    return (dt - _EPOCH) // _US


# -- what is archived --------------------------------------------------------------------------------


def archivable(stanza: Stanza) -> bool:
    """XEP-0313 §5.1.1 with XEP-0334 hints: chat and normal messages with a body, or with
    ``<store/>``; never ``<no-store/>``/``<no-permanent-store/>``, errors, groupchat, headlines,
    chat states alone."""
    if stanza.name != "message" or (stanza.type or "normal") not in ("chat", "normal"):
        return False
    el = stanza.element
    if el.find(f"{{{HINTS}}}no-store") is not None or el.find(f"{{{HINTS}}}no-permanent-store") is not None:
        return False
    if el.find(f"{{{HINTS}}}store") is not None:
        return True
    return el.find(f"{{{stanza.namespace or ns.CLIENT}}}body") is not None


def peer_of(value: str | None) -> Jid | None:
    """The other party's JID from a 'to' or 'from' attribute (None when absent or invalid)."""
    if not value:
        return None
    try:
        return Jid.parse(value)
    except InvalidJid:
        return None


# -- preferences (XEP-0441) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prefs:
    default: str = "always"  # always | never | roster
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


def _listed(items: Iterable[str], peer: Jid) -> bool:
    """XEP-0441 §2.3: a listed bare JID matches the peer's bare JID, a full one the peer as-is."""
    for item in items:
        try:
            jid = Jid.parse(item)
        except InvalidJid:
            continue
        if jid == (peer if jid.resource is not None else peer.bare):
            return True
    return False


def decide(prefs: Prefs, peer: Jid) -> bool | None:
    """Whether messages with ``peer`` are archived: True, False, or None when it depends on the
    user's roster (default 'roster', peer in neither list).  'never' wins over 'always'."""
    if _listed(prefs.never, peer):
        return False
    if _listed(prefs.always, peer):
        return True
    if prefs.default == "roster":
        return None
    return prefs.default == "always"


def parse_prefs(el: ET.Element, max_jids: int = 1000) -> Prefs:
    """A ``<prefs/>`` set by a client: the default and both lists, JIDs normalised."""
    default = el.get("default")
    if default not in MODES:
        raise errors.BadRequest("prefs need a default of always, never or roster")
    lists: dict[str, list[str]] = {"always": [], "never": []}
    for name, out in lists.items():
        container = el.find(f"{{{MAM}}}{name}")
        if container is None:
            continue
        for item in container.findall(f"{{{MAM}}}jid"):
            try:
                jid = str(Jid.parse((item.text or "").strip()))
            except InvalidJid:
                raise errors.BadRequest(f"not a JID in <{name}/>: {item.text!r}") from None
            if jid not in out:
                out.append(jid)
    if len(lists["always"]) + len(lists["never"]) > max_jids:
        raise errors.BadRequest(f"at most {max_jids} JIDs in the preferences")
    return Prefs(default, tuple(lists["always"]), tuple(lists["never"]))


def prefs_element(prefs: Prefs) -> ET.Element:
    el = ET.Element(f"{{{MAM}}}prefs", {"default": prefs.default})
    for name, items in (("always", prefs.always), ("never", prefs.never)):
        container = ET.SubElement(el, f"{{{MAM}}}{name}")  # both present, even empty
        for item in items:
            ET.SubElement(container, f"{{{MAM}}}jid").text = item
    return el


# -- queries --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """What a query selects, before paging (the SQL ``WHERE`` of the store)."""

    with_bare: str | None = None
    with_resource: str | None = None  # only with a full JID in 'with'
    min_id: int | None = None  # inclusive bounds: from 'start', 'end', 'after-id', 'before-id'
    max_id: int | None = None
    ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Query:
    queryid: str | None
    filters: Filters
    max: int  # page size (clamped to the server's max_page)
    after: int | None = None  # RSM <after>
    before: int | None = None  # RSM <before> with an id
    backward: bool = False  # RSM <before> present (empty: the last page)
    flip: bool = False  # XEP-0313 <flip-page/>
    referenced: tuple[int, ...] = ()  # ids that must exist in the archive (else item-not-found)


_FIELDS = ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids")


def _form_values(form: ET.Element) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for f in form.findall(f"{{{XDATA}}}field"):
        var = f.get("var")
        if var is None:
            raise errors.BadRequest("a form field without 'var'")
        if var not in _FIELDS:
            # XEP-0313 §4.1.5: a field the server does not recognise
            raise errors.FeatureNotImplemented(f"unsupported query field {var!r}")
        if var in values:
            raise errors.BadRequest(f"field {var!r} given twice")
        got = [text for v in f.findall(f"{{{XDATA}}}value") if (text := (v.text or "").strip())]
        if got:  # a field left empty is no filter
            values[var] = got
    return values


def _single(values: dict[str, list[str]], var: str) -> str | None:
    got = values.get(var)
    if got is None:
        return None
    if len(got) != 1:
        raise errors.BadRequest(f"field {var!r} takes one value")
    return got[0]


def _rsm_id(el: ET.Element | None) -> int | None:
    if el is None or not (el.text or "").strip():
        return None
    return parse_id(el.text)


def parse_query(payload: ET.Element, *, default_page: int, max_page: int) -> Query:
    """An ``<iq type='set'><query xmlns='urn:xmpp:mam:2'/></iq>`` payload.  RSM ``max`` above
    ``max_page`` is clamped (a client asking for a billion gets ``max_page`` and pages on)."""
    if payload.get("node"):
        raise errors.FeatureNotImplemented("no pubsub node archives here")
    queryid = payload.get("queryid")
    filters = Filters()
    referenced: list[int] = []
    forms = payload.findall(f"{{{XDATA}}}x")
    if len(forms) > 1:
        raise errors.BadRequest("one data form per query")
    if forms:
        form = forms[0]
        if form.get("type", "submit") != "submit":
            raise errors.BadRequest("the query form is of type submit")
        values = _form_values(form)
        form_type = _single(values, "FORM_TYPE")
        if form_type is not None and form_type != MAM:
            raise errors.BadRequest(f"FORM_TYPE {form_type!r} is not {MAM}")
        low: list[int] = []
        high: list[int] = []
        with_bare = with_resource = None
        with_value = _single(values, "with")
        if with_value is not None:
            try:
                with_jid = Jid.parse(with_value)
            except InvalidJid:
                raise errors.BadRequest(f"'with' is not a JID: {with_value!r}") from None
            with_bare, with_resource = str(with_jid.bare), with_jid.resource
        start = _single(values, "start")
        if start is not None:
            low.append(make_id(parse_stamp(start), 0))
        end = _single(values, "end")
        if end is not None:
            ts = parse_stamp(end)
            high.append(make_id(ts, _RANDOM_MASK) if ts >= 0 else -1)
        after_id = _single(values, "after-id")
        if after_id is not None:
            n = parse_id(after_id)
            referenced.append(n)
            low.append(n + 1)
        before_id = _single(values, "before-id")
        if before_id is not None:
            n = parse_id(before_id)
            referenced.append(n)
            high.append(n - 1)
        ids: tuple[int, ...] | None = None
        if "ids" in values:
            raw = values["ids"]
            if len(raw) > max_page:
                raise errors.BadRequest(f"at most {max_page} ids per query")
            ids = tuple(sorted({parse_id(v) for v in raw}))
            referenced.extend(ids)
        filters = Filters(with_bare, with_resource, max(low) if low else None, min(high) if high else None, ids)
    size = default_page
    after = before = None
    backward = False
    rsm = payload.find(f"{{{RSM}}}set")
    if rsm is not None:
        if rsm.find(f"{{{RSM}}}index") is not None:
            raise errors.FeatureNotImplemented("RSM <index/> is not supported: page with <after/> and <before/>")
        max_el = rsm.find(f"{{{RSM}}}max")
        if max_el is not None:
            text = (max_el.text or "").strip()
            if not text.isdigit() or not text.isascii():
                raise errors.BadRequest(f"RSM <max/> is not a number: {max_el.text!r}")
            size = int(text)
        after_el = rsm.find(f"{{{RSM}}}after")
        if after_el is not None:
            after = _rsm_id(after_el)
            if after is None:
                raise errors.BadRequest("an empty RSM <after/>")
            referenced.append(after)
        before_el = rsm.find(f"{{{RSM}}}before")
        if before_el is not None:
            before = _rsm_id(before_el)
            if before is not None:
                referenced.append(before)
            backward = after is None  # both: a range, read forward (XEP-0313 §4.3: undefined)
    flip = payload.find(f"{{{MAM}}}flip-page") is not None
    return Query(queryid, filters, min(size, max_page), after, before, backward, flip,
                 tuple(dict.fromkeys(referenced)))


def query_form() -> ET.Element:
    """The answer to ``<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>``: the fields we take."""
    q = ET.Element(f"{{{MAM}}}query")
    x = ET.SubElement(q, f"{{{XDATA}}}x", {"type": "form"})
    hidden = ET.SubElement(x, f"{{{XDATA}}}field", {"type": "hidden", "var": "FORM_TYPE"})
    ET.SubElement(hidden, f"{{{XDATA}}}value").text = MAM
    for var, ftype in (("with", "jid-single"), ("start", "text-single"), ("end", "text-single"),
                       ("before-id", "text-single"), ("after-id", "text-single")):
        ET.SubElement(x, f"{{{XDATA}}}field", {"type": ftype, "var": var})
    ids = ET.SubElement(x, f"{{{XDATA}}}field", {"type": "list-multi", "var": "ids"})
    validate = ET.SubElement(ids, f"{{{XDATA_VALIDATE}}}validate", {"datatype": "xs:string"})
    ET.SubElement(validate, f"{{{XDATA_VALIDATE}}}open")
    return q


# -- results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Page:
    """One page of a query, in chronological order."""

    rows: list[tuple[int, int, bytes]] = field(default_factory=list)  # (id, ts µs, stanza)
    complete: bool = True
    count: int | None = None


def fin_element(page: Page) -> ET.Element:
    """``<fin/>`` with the RSM summary: first and last of the page (chronological, flipped or
    not), the count of the whole query."""
    fin = ET.Element(f"{{{MAM}}}fin")
    fin.set("complete", "true" if page.complete else "false")
    rsm = ET.SubElement(fin, f"{{{RSM}}}set")
    if page.rows:
        ET.SubElement(rsm, f"{{{RSM}}}first").text = str(page.rows[0][0])
        ET.SubElement(rsm, f"{{{RSM}}}last").text = str(page.rows[-1][0])
    if page.count is not None:
        ET.SubElement(rsm, f"{{{RSM}}}count").text = str(page.count)
    return fin


def result_message(archive: str, to: str, queryid: str | None, archive_id: int, ts_us: int,
                   original: ET.Element, msg_id: str | None = None) -> Stanza:
    """One result: the archived message forwarded (XEP-0297) with its archiving time."""
    el = ET.Element(f"{{{ns.CLIENT}}}message", {"from": archive, "to": to})
    if msg_id is not None:
        el.set("id", msg_id)
    result = ET.SubElement(el, f"{{{MAM}}}result", {"id": str(archive_id)})
    if queryid is not None:
        result.set("queryid", queryid)
    forwarded = ET.SubElement(result, f"{{{FORWARD}}}forwarded")
    ET.SubElement(forwarded, f"{{{ns.DELAY}}}delay", {"stamp": format_stamp(ts_us)})
    forwarded.append(original)
    return Stanza(el)


def metadata_element(first: tuple[int, int] | None, last: tuple[int, int] | None) -> ET.Element:
    """``<metadata/>``: the first and last (id, time) of the archive (empty for an empty archive)."""
    el = ET.Element(f"{{{MAM}}}metadata")
    for name, item in (("start", first), ("end", last)):
        if item is not None:
            ET.SubElement(el, f"{{{MAM}}}{name}", {"id": str(item[0]), "timestamp": format_stamp(item[1])})
    return el


# -- XEP-0359 stanza ids --------------------------------------------------------------------------


def _by(el: ET.Element) -> Jid | None:
    by = el.get("by")
    return peer_of(by)


def forged_ids(stanza: Stanza, archive: Jid) -> list[ET.Element]:
    """``<stanza-id/>`` elements claiming to be by ``archive`` (only the archive may add one)."""
    return [c for c in stanza.element if c.tag == f"{{{SID}}}stanza-id" and _by(c) == archive]


def claimed_id(stanza: Stanza, archive: Jid) -> int | None:
    """The archive id of the one well-formed ``<stanza-id/>`` by ``archive`` the stanza carries
    (a message routed again — a closing session's, XEP-0198's unacked ones — keeps the one it was
    archived with); None when there is none, several, or a malformed one."""
    forged = forged_ids(stanza, archive)
    if len(forged) != 1:
        return None
    try:
        return parse_id(forged[0].get("id"))
    except errors.BadRequest:
        return None


def without_forged_ids(stanza: Stanza, archive: Jid) -> Stanza:
    """``stanza`` without the stanza-ids by ``archive`` a sender put there (XEP-0359 §4); the same
    object when there are none."""
    forged = forged_ids(stanza, archive)
    if not forged:
        return stanza
    return _copy(stanza, [c for c in stanza.element if not any(c is f for f in forged)])


def with_stanza_id(stanza: Stanza, archive: Jid, archive_id: int) -> Stanza:
    """A copy of ``stanza`` (already without forged ids) with our ``<stanza-id/>``."""
    sid = ET.Element(f"{{{SID}}}stanza-id", {"id": str(archive_id), "by": str(archive)})
    if stanza.namespace in _OTHER_CONTENT:
        return _copy(stanza, [*stanza.element, sid])  # re-namespaced for the client
    return stanza.appended(sid)


def client_stanza(stanza: Stanza) -> Stanza:
    """``stanza`` in ``jabber:client``: a component's (``jabber:component:accept``) or a server's
    stanza re-namespaced, as it is written to a client (and archived); others as they are."""
    if stanza.namespace not in _OTHER_CONTENT:
        return stanza
    return _copy(stanza, list(stanza.element))


def _copy(stanza: Stanza, children: Sequence[ET.Element]) -> Stanza:
    """A new stanza with ``stanza``'s attributes and ``children``, in ``jabber:client``."""
    old = stanza.namespace
    renamed = old in _OTHER_CONTENT
    el = ET.Element(f"{{{ns.CLIENT}}}{stanza.name}" if renamed else stanza.element.tag, dict(stanza.element.attrib))
    el.text = stanza.element.text
    el.extend(_in_client_ns(c, "{" + old + "}") if renamed else c for c in children)
    return Stanza(el)


def _in_client_ns(el: ET.Element, prefix: str) -> ET.Element:
    tag = f"{{{ns.CLIENT}}}{el.tag[len(prefix):]}" if el.tag.startswith(prefix) else el.tag
    out = ET.Element(tag, dict(el.attrib))
    out.text, out.tail = el.text, el.tail
    out.extend(_in_client_ns(c, prefix) for c in el)
    return out
