"""Named hook points with priorities: how modules take part in handling without the core knowing them.

A hook is a name (the constants of :class:`Hook`, each documenting its arguments and the
semantics its callers use) and an ordered list of handlers, lowest priority number first, ties in
the order they were added.  Callers pick one of four ways to run a hook:

* :meth:`Hooks.run` / :meth:`Hooks.run_async` — every handler, in order, until one returns
  :data:`STOP` (MongooseIM's ``run_fold`` with ``{stop, …}``, Prosody's returning non-nil).
* :meth:`Hooks.first` / :meth:`Hooks.first_async` — the first handler that returns something
  other than ``None`` decides; its value is the result (``None`` when none did).  Routing
  decisions use this: a handler answers "taken", "not mine" (``None``) or a definite "no".
* :meth:`Hooks.fold` / :meth:`Hooks.fold_async` — each handler gets the accumulator and returns the
  next one (stream features, disco features); returning :data:`STOP` ends with the value so far.

Async variants accept sync and async handlers alike (an awaitable result is awaited).  Handlers
are owned: :meth:`Hooks.remove_owner` takes out everything a stopping module added.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Hooks", "Hook", "STOP", "HookHandler"]


class _Stop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STOP"


STOP: Final = _Stop()
"""Returned by a handler of :meth:`Hooks.run`/:meth:`Hooks.fold` to end the run there."""

HookHandler = Callable[..., Any]


class Hook:
    """The hook points of a node (name = what runs it, arguments, semantics)."""

    # -- c2s stream -------------------------------------------------------------------------------
    C2S_FEATURES = "c2s_features"
    """fold(list[bytes], stage: str, stream) — ``<stream:features/>`` children.  stage is one of
    ``pre_tls``, ``pre_auth`` (after TLS), ``post_auth`` (after SASL, before bind), ``bound`` (after
    a SASL2 ``<success/>`` that bound a resource or resumed a session inline)."""
    C2S_ELEMENT = "c2s_element"
    """first(session, element) — a top-level element of an established stream that is not a
    stanza, e.g. XEP-0198's ``<r/>``/``<a/>``/``<enable/>``.  True: taken; None from all:
    unsupported-stanza-type.  Synchronous, so it keeps its place among the stanzas."""
    C2S_PRE_BIND_ELEMENT = "c2s_pre_bind_element"
    """first_async(session, element) — such an element after SASL, before bind (``<resume/>``); the
    stream waits for the handler, which may call ``session.resumed(record, data)``."""
    SASL2_INLINE = "sasl2_inline"
    """fold(list[bytes], stream) — children of SASL2's ``<authentication><inline/>`` feature (XEP-0388):
    what a client may ask for inside its ``<authenticate/>`` besides Bind 2 (XEP-0198 ``<sm/>``,
    XEP-0484 ``<fast/>``)."""
    BIND2_FEATURES = "bind2_features"
    """fold(list[str], stream) — the ``var``s listed in Bind 2's ``<inline/>`` (XEP-0386): features a
    module enables when its element is inside ``<bind xmlns='urn:xmpp:bind:0'/>`` (``bind2_inline``)."""
    SASL2_TOKEN = "sasl2_token"
    """first_async(domain, username, request: Sasl2Request) — a SASL2 token mechanism
    (``request.mechanism``, XEP-0484 HT-*) needs the keys of the tokens the client may be using:
    list[TokenKey] (empty, or None from all: not-authorized).  Having handlers is what makes the
    c2s stream accept the HT mechanisms."""
    SASL2_AUTHENTICATED = "sasl2_authenticated"
    """fold_async(list[bytes], session, auth: Sasl2Authenticated) — a SASL2 mechanism accepted the
    client (``session.authenticated`` is set; nothing is bound yet): return the ``<success/>``
    children so far.  A handler may refuse after all by raising ``SaslFailure`` (a replayed XEP-0484
    counter), issue what ``auth.request`` asks for (a FAST ``<token/>``), or resume a XEP-0198
    session (``session.resumed(record, data)``: ``data`` goes out after ``<success/>``, the
    ``<resumed/>`` goes into the returned list) — then no resource is bound."""
    BIND2_INLINE = "bind2_inline"
    """fold_async(list[bytes], session, bind: Element) — a Bind 2 request bound ``session`` (after the
    replication wait, before ``<success/>``): enable what ``bind``'s children ask for and return the
    children of ``<bound/>`` (XEP-0198 ``<enabled/>``; carbons and CSI add nothing)."""
    C2S_PRE_AUTH_IQ = "c2s_pre_auth_iq"
    """first_async(stanza, domain, session) — an IQ before authentication (XEP-0077 registration)
    on ``session``'s stream (its ``ip`` for per-address limits): the reply stanza, or None
    (not-authorized)."""
    C2S_STANZA_RECEIVED = "c2s_stanza_received"
    """run(session, stanza) — a stanza read from the client, in stream order, before it is queued
    for handling."""
    C2S_STANZA_HANDLED = "c2s_stanza_handled"
    """run(session, stanza) — a stanza from the client was handled (routed, archived…), in stream
    order: XEP-0198 counts ``h`` here, so an acknowledged stanza is never lost."""

    C2S_STREAM_CLOSING = "c2s_stream_closing"
    """run(session, reason) — a bound session's stream just ended (nothing more can be written to
    it; what is written now goes to ``session_hold``): the moment to hand over what a module holds."""

    # -- the session's stanzas ----------------------------------------------------------------------
    USER_SEND_PACKET = "user_send_packet"
    """first_async(session, stanza) — a stanza from a bound client, ``from`` stamped.  True: a
    module handled it (presence); None: it is routed."""
    USER_RECEIVE_PACKET = "user_receive_packet"
    """run(session, stanza, data: bytes) — just after ``data`` was queued to a client's stream."""
    USER_RECEIVE_FILTER = "user_receive_filter"
    """first(session, stanza) — before a stanza is written to a client; True: a module holds it
    back (XEP-0352 CSI), and writes it later with ``session.write(stanza)``."""
    MESSAGE_TO_ACCOUNT = "message_to_account"
    """fold (async, by the router) of (stanza, to: Jid) — a message is about to be delivered to, or
    stored for, a local account: once in the whole deployment, by the member and region that
    handles it (archives, stanza ids).  Return the stanza to deliver (changed or not), or None to
    take it (the handlers after are skipped)."""
    MESSAGE_DELIVERED = "message_delivered"
    """run(stanza, to: Jid, which: Fanout | None) — a message was delivered to an account's
    resources: ``to`` itself (a full JID, ``which`` None) or the resources ``which`` selected
    (a bare JID).  For copies to the others (XEP-0280 carbons)."""
    FILTER_LOCAL_PACKET = "filter_local_packet"
    """run_async(stanza, sender: Jid, to: Jid) — a stanza about to be routed (by the member that
    routes it: the sender's node, or a gateway for what comes from another region or domain);
    STOP drops it (the handler answered it, e.g. XEP-0191 blocking)."""

    # -- sessions ---------------------------------------------------------------------------------
    SESSION_OPENED = "session_opened"
    """run(session) — a resource was bound (before the bind result is sent)."""
    SESSION_DETACH = "session_detach"
    """first_async(session, reason) — the connection of a bound session is gone; True: a module
    keeps the session alive detached (XEP-0198) and will end it later through the session manager."""
    SESSION_CLOSED = "session_closed"
    """run_async(session) — a session ended (unbound, unavailable sent)."""
    SESSION_HOLD = "session_hold"
    """first(session, stanza) — a stanza reached a session whose stream is closing; True: a module
    keeps it for the session (which it will detach), else it is routed again."""

    # -- presence and roster ---------------------------------------------------------------------
    PRESENCE_OUT = "presence_out"
    """first_async(session, stanza) — presence from a bound client (the presence module's)."""
    PRESENCE_IN = "presence_in"
    """first_async(stanza, sender: Jid, to: Jid) — presence for a local account (bare or a
    subscription state to a full JID)."""
    PRESENCE_BROADCAST = "presence_broadcast"
    """fold_async(stanza, session) — the available presence a session is about to broadcast
    (XEP-0153 adds the avatar hash): return the stanza to send (a changed copy, or the same)."""
    PRESENCE_DELIVERED = "presence_delivered"
    """run(stanza, sender: Jid, to: Jid) — available/unavailable presence from ``sender`` was
    delivered to the resources of local account ``to`` (bare): e.g. PEP sends a contact that came
    online the last items it is interested in (XEP-0163 §4.3.2)."""
    PRESENCE_AVAILABLE = "presence_available"
    """run_async(session, initial: bool, priority: int, previous: int) — a session sent available
    presence (initial, or an update from ``previous`` priority)."""
    SUBSCRIPTION_OUT = "subscription_out"
    """first_async(user: Jid, contact: Jid, ptype) — a subscription request/answer on the user's
    behalf (the admin API's ``roster subscription``)."""
    ROSTER_REMOVE = "roster_remove"
    """run_async(user: Jid, contact: Jid) — an item is being removed: cancel subscriptions."""
    ROSTER_CHANGED = "roster_changed"
    """run(user: Jid, item: RosterItem | None, ver: str, jid: str | None) — push to resources."""

    # -- account data ---------------------------------------------------------------------------
    PRIVATE_GET = "private_get"
    """first_async(user: Jid, namespace: str) — a XEP-0049 get of ``namespace`` by the account
    ``user``: a module that keeps that namespace itself (PEP: XEP-0048 bookmarks, XEP-0402 §5.3)
    returns its elements (list[Element]); None from all: the private storage's own rows."""
    PRIVATE_SET = "private_set"
    """first_async(user: Jid, namespace: str, elements: list[Element]) — a XEP-0049 set: True when
    a module stored the elements itself (the private storage then drops its own row); a
    StanzaError refuses the set."""
    PEP_ITEMS = "pep_items"
    """first_async(owner: Jid, node: str, item_id: str | None) — for another module (XEP-0398 in
    vcard): the account's item ``item_id`` of PEP ``node``, or its last item when None, as a list of
    (item id, payload Element), empty when there is none; None from all: no PEP here."""
    PEP_PUBLISH = "pep_publish"
    """first_async(owner: Jid, node: str, item_id: str, payload: Element | None, origin: str,
    access_model: str) — a module publishes ``payload`` as item ``item_id`` of the account's PEP
    ``node`` on its behalf (None: retracts that item), with the notifications of the account's own
    publish; a missing node is created with ``access_model``.  True when done; a StanzaError refuses
    it (payload-too-big, max-nodes-exceeded); None from all: no PEP here."""
    PEP_CHANGED = "pep_changed"
    """run_async(owner: Jid, node: str, origin: str) — an account's PEP node changed (an item
    published or retracted, the node purged or deleted), by the account itself (``origin`` "") or
    by the module ``origin`` through ``pep_publish``; after the notifications, before the answer to
    the request.  Handlers read what they need through ``pep_items``."""

    # -- offline --------------------------------------------------------------------------------
    REGION_SYNC = "region_sync"
    """run_async() — before a decision that rests on the other members' sessions (a bare-JID
    message about to go to offline storage): returns once this member has received every table
    change the others made before the call (the cluster answers a request on each link after
    what it sent earlier), or after the cluster's ping timeout."""
    OFFLINE_MESSAGE = "offline_message"
    """first_async(stanza, to: Jid) — a message for an account with no resource to take it
    (push → store → error).  True: kept; None from all: service-unavailable."""

    OFFLINE_FLUSH = "offline_flush"
    """run_async(record: SessionRecord) — deliver what is stored for the record's account to it
    (a region that now holds an available resource, after a race with a login elsewhere)."""

    # -- cluster ---------------------------------------------------------------------------------
    MEMBER_DOWN = "member_down"
    """run(node, sessions: list[SessionRecord], leader: bool) — a member left; its sessions dropped."""
    MEMBER_BACK = "member_back"
    """run(node, sessions: list[SessionRecord]) — a member's sessions are new here (join, heal)."""

    # -- routing (the chain: components → local → other regions → S2S) ----------------------------
    ROUTE_REMOTE = "route_remote"
    """first_async(stanza, to: Jid) — ``to`` is a domain this region does not serve.  True:
    taken; a handler that cannot take it raises a StanzaError or returns None for the next."""
    ROUTE_ELSEWHERE = "route_elsewhere"
    """first_async(stanza, to: Jid) — no session here: bool, whether another region took it."""
    ROUTE_BETTER_ELSEWHERE = "route_better_elsewhere"
    """first_async(stanza, bare: Jid, local_top: int) — True: taken to a region with resources of
    higher priority (RFC 6121 §8.5.2.1.1 across regions)."""
    ROUTE_FANOUT = "route_fanout"
    """first(stanza, bare: Jid, which: Fanout) — deliver to ``bare``'s resources in other regions."""
    ROUTE_MANY = "route_many"
    """first(stanzas: list[Stanza], recipients: list[str]) — a run (each recipient to get a copy of
    every stanza, in order, ``to`` set on each) for full JIDs of the served domains that have no
    session in this region (occupants of a room in another region): True when the way to the
    other regions took them all, one relay per region holding some (a few when the run is long),
    expanded by that region's gateway."""
    ROUTE_BOUNCE = "route_bounce"
    """first_async(stanza) — a stanza met a closing session: True when it will be re-resolved later."""
    DELIVER_TO_MEMBER = "deliver_to_member"
    """first(record: SessionRecord, stanza) — the session is on another member: True when sent."""
    DELIVER_MANY_TO_MEMBER = "deliver_many_to_member"
    """first(node: str, copies: list[tuple[SessionRecord, str]], stanzas: list[Stanza]) — a run for
    sessions of one other member (each (record, its 'to')): every session gets every stanza, in
    order, ``to`` set on each there; one cluster frame: True when sent."""

    # -- discovery --------------------------------------------------------------------------------
    DISCO_SERVER_FEATURES = "disco_server_features"
    """fold(set[str]) — the server's XEP-0030 features."""
    DISCO_SERVER_ITEMS = "disco_server_items"
    """fold(list[dict[str, str]], domain: Jid) — the server's disco#items (services such as
    ``upload.<domain>``): dicts of ``jid`` and optional ``name``/``node``."""
    DISCO_SERVER_EXTENSIONS = "disco_server_extensions"
    """fold(list[Element]) — XEP-0128 extension forms of the server's disco#info (XEP-0157)."""
    DISCO_ACCOUNT_FEATURES = "disco_account_features"
    """fold(set[str], user: Jid) — the features of an account's disco#info (PEP, MAM)."""
    DISCO_ACCOUNT_IDENTITIES = "disco_account_identities"
    """fold(list[dict[str, str]], user: Jid) — an account's identities (``pubsub``/``pep``)."""
    DISCO_SERVER_IDENTITIES = "disco_server_identities"
    """fold(list[dict[str, str]]) — the server's identities (category, type, name)."""


@dataclass(order=True, slots=True)
class _Entry:
    priority: int
    seq: int
    handler: HookHandler = field(compare=False)
    owner: object = field(compare=False, default=None)


class Hooks:
    """The hook registry of one node (not a global: each node in a test process has its own)."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[_Entry]] = {}
        self._seq = itertools.count()

    def add(self, name: str, handler: HookHandler, priority: int = 50, *, owner: object = None) -> None:
        entries = self._hooks.setdefault(name, [])
        entries.append(_Entry(priority, next(self._seq), handler, owner))
        entries.sort()

    def remove_owner(self, owner: object) -> None:
        for name, entries in list(self._hooks.items()):
            self._hooks[name] = [e for e in entries if e.owner is not owner]

    def handlers(self, name: str) -> list[HookHandler]:
        return [e.handler for e in self._hooks.get(name, ())]

    def has(self, name: str) -> bool:
        return bool(self._hooks.get(name))

    # -- run all ---------------------------------------------------------------------------------

    def run(self, name: str, *args: Any) -> bool:
        """Every handler until one returns STOP; False when one did."""
        for entry in self._hooks.get(name, ()):
            if entry.handler(*args) is STOP:
                return False
        return True

    async def run_async(self, name: str, *args: Any) -> bool:
        for entry in self._hooks.get(name, ()):
            result = entry.handler(*args)
            if result is not None and result is not STOP and inspect.isawaitable(result):
                result = await result  # (None and STOP first: isawaitable costs ~0.5 µs on them)
            if result is STOP:
                return False
        return True

    # -- first answer ------------------------------------------------------------------------------

    def first(self, name: str, *args: Any) -> Any:
        for entry in self._hooks.get(name, ()):
            result = entry.handler(*args)
            if result is not None:
                return result
        return None

    async def first_async(self, name: str, *args: Any) -> Any:
        for entry in self._hooks.get(name, ()):
            result = entry.handler(*args)
            if result is not None and result is not STOP and inspect.isawaitable(result):
                result = await result  # (None and STOP first: isawaitable costs ~0.5 µs on them)
            if result is not None:
                return result
        return None

    # -- fold --------------------------------------------------------------------------------------

    def fold(self, name: str, acc: Any, *args: Any) -> Any:
        for entry in self._hooks.get(name, ()):
            result = entry.handler(acc, *args)
            if result is STOP:
                return acc
            acc = result
        return acc

    async def fold_async(self, name: str, acc: Any, *args: Any) -> Any:
        for entry in self._hooks.get(name, ()):
            result = entry.handler(acc, *args)
            if result is not None and result is not STOP and inspect.isawaitable(result):
                result = await result  # (None and STOP first: isawaitable costs ~0.5 µs on them)
            if result is STOP:
                return acc
            acc = result
        return acc
