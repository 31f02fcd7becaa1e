"""The MUC module on fake nodes (real routers, hooks, session tables and SQLite; only the client
connections and the cluster links are stand-ins): the service on the routing chain, rooms
persisted and loaded again, errors for bad input — and a region of fake members, where a room is
sequenced by one member, copied to the others, and taken over when its member dies."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.cluster.table import Op
from cluster_node.core.hooks import Hook
from cluster_node.core.sessions import SessionRecord
from cluster_node.modules import BUILTIN
from cluster_node.modules.disco import Disco
from cluster_node.modules.loader import module_settings
from cluster_node.modules.muc import Muc
from cluster_node.modules.muc.protocol import MUC, MUC_OWNER, MUC_USER
from cluster_node.xmpp import ns
from cluster_node.xmpp.stanza import Stanza
from gateway.publisher import Publisher, routed_domain
from tests.helpers.fake_host import FakeNode, FakeSession, error_condition, fake_node

SERVICE = "conference.example.com"
ROOM = f"coven@{SERVICE}"
ALICE, BOB, CAROL = "alice@example.com/phone", "bob@example.com/laptop", "carol@example.com/pc"
U = f"{{{MUC_USER}}}"
C = f"{{{ns.CLIENT}}}"


def join_xml(full: str, nick: str, room: str = ROOM, extra: str = "") -> str:
    return f"<presence from='{full}' to='{room}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"


def instant(full: str, room: str = ROOM, fields: str = "") -> str:
    return (f"<iq type='set' id='cfg' from='{full}' to='{room}'><query xmlns='{MUC_OWNER}'>"
            f"<x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>")


def say_xml(full: str, body: str, room: str = ROOM) -> str:
    return f"<message type='groupchat' from='{full}' to='{room}'><body>{body}</body></message>"


def codes(s: Stanza) -> set[int]:
    return {int(c.get("code", "0")) for c in s.element.iterfind(f"{U}x/{U}status")}


def bodies(session: FakeSession) -> list[str]:
    return [b for s in session.of("message") if (b := s.element.findtext(C + "body"))]


@contextlib.asynccontextmanager
async def muc_node(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[FakeNode, Muc]]:
    async with fake_node(tmp_path) as node:
        muc = await node.start(Muc, **settings)
        try:
            yield node, muc
        finally:
            await muc.stop()


# -- one node ---------------------------------------------------------------------------------------------


async def test_a_room_on_one_node(tmp_path: Path) -> None:
    async with muc_node(tmp_path) as (node, _muc):
        alice, bob = node.bind(ALICE), node.bind(BOB)
        await node.route(join_xml(ALICE, "alice"))
        assert {110, 201} <= codes(alice.of("presence")[0])
        await node.route(join_xml(BOB, "bob"))
        assert error_condition(bob.take()[0]) == "item-not-found"  # locked until configured
        await node.route(instant(ALICE))
        assert alice.of("iq", "result")
        await node.route(join_xml(BOB, "bob"))
        await node.route(say_xml(BOB, "hello"))
        assert bodies(alice) == ["hello"] and bodies(bob) == ["hello"]
        await node.route(say_xml(CAROL, "not in"))
        await node.route(f"<message type='groupchat' from='{CAROL}' to='nothere@{SERVICE}'><body>x</body></message>")
        # carol has no session here: the errors went nowhere, and nothing broke


async def test_errors_reach_the_sender(tmp_path: Path) -> None:
    async with muc_node(tmp_path, lock_new_rooms=False, max_room_name_length=8) as (node, _muc):
        alice, carol = node.bind(ALICE), node.bind(CAROL)
        await node.route(join_xml(ALICE, "alice"))
        await node.route(say_xml(CAROL, "not in"))
        assert error_condition(carol.take()[0]) == "not-acceptable"
        await node.route(f"<message type='groupchat' from='{CAROL}' to='nothere@{SERVICE}'><body>x</body></message>")
        assert error_condition(carol.take()[0]) == "item-not-found"
        await node.route(join_xml(CAROL, "c" * 300))
        assert error_condition(carol.take()[0]) == "not-acceptable"
        await node.route(join_xml(CAROL, "carol", room=f"{'r' * 20}@{SERVICE}"))
        assert error_condition(carol.take()[0]) == "not-acceptable"
        await node.route(join_xml(CAROL, "carol", extra="<history maxstanzas='1000000000'/>"))
        assert carol.of("presence")[-1].from_ == f"{ROOM}/carol"
        alice.take()
        await node.route(f"<presence type='error' from='{CAROL}' to='{ROOM}/carol'/>")
        assert 333 in codes(alice.take()[0])


async def test_a_full_room_and_a_presence_flood_are_counted_as_refusals(tmp_path: Path) -> None:
    async with muc_node(tmp_path, lock_new_rooms=False, max_users=1, presence_rate=1) as (node, _muc):
        alice, bob = node.bind(ALICE), node.bind(BOB)
        await node.route(join_xml(ALICE, "alice"))
        await node.route(join_xml(BOB, "bob"))
        assert error_condition(bob.take()[0]) == "service-unavailable"
        assert node.services.refusals == {"modules.muc.max_users": 1}
        for _ in range(3):  # a burst of twice the rate, the join included: the last ones are dropped
            await node.route(f"<presence from='{ALICE}' to='{ROOM}/alice'><show>away</show></presence>")
        assert node.services.refusals["modules.muc.presence_rate"] >= 1
        assert alice.of("presence")


async def test_the_service_answers_disco_and_is_among_the_servers_items(tmp_path: Path) -> None:
    async with muc_node(tmp_path, lock_new_rooms=False) as (node, _muc):
        await node.start(Disco)
        alice = node.bind(ALICE)
        await node.route(join_xml(ALICE, "alice"))
        await node.route(f"<iq type='get' id='i' from='{ALICE}' to='{SERVICE}'><query xmlns='{ns.DISCO_INFO}'/></iq>")
        info = alice.of("iq", "result")[-1]
        assert MUC in {f.get("var") for f in info.element.iter(f"{{{ns.DISCO_INFO}}}feature")}
        await node.route(f"<iq type='get' id='j' from='{ALICE}' to='{SERVICE}'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")
        items = alice.of("iq", "result")[-1]
        assert [i.get("jid") for i in items.element.iter(f"{{{ns.DISCO_ITEMS}}}item")] == [ROOM]
        await node.route(f"<iq type='get' id='k' from='{ALICE}' to='example.com'>"
                         f"<query xmlns='{ns.DISCO_ITEMS}'/></iq>")
        server_items = alice.of("iq", "result")[-1]
        assert SERVICE in {i.get("jid") for i in server_items.element.iter(f"{{{ns.DISCO_ITEMS}}}item")}


async def test_persistent_rooms_come_back_from_the_database(tmp_path: Path) -> None:
    persistent = "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
    async with muc_node(tmp_path) as (node, muc):
        node.bind(ALICE)
        await node.route(join_xml(ALICE, "alice"))
        await node.route(instant(ALICE, fields=persistent))
        await node.route(f"<message type='groupchat' from='{ALICE}' to='{ROOM}'><subject>Potions</subject></message>")
        await node.route(f"<iq type='set' id='a' from='{ALICE}' to='{ROOM}'><query xmlns='{MUC}#admin'>"
                         "<item affiliation='member' jid='bob@example.com' nick='bobby'/></query></iq>")
        await node.route(f"<presence type='unavailable' from='{ALICE}' to='{ROOM}/alice'/>")
        assert ROOM in muc.rooms
    async with muc_node(tmp_path) as (node, muc):  # a new process: nothing in memory
        assert not muc.rooms
        bob = node.bind(BOB)
        await node.route(join_xml(BOB, "bob"))
        assert bob.of("message")[-1].element.findtext(C + "subject") == "Potions"
        room = muc.rooms[ROOM]
        assert room.affiliation("alice@example.com") == "owner" and room.affiliation("bob@example.com") == "member"
        alice = node.bind(ALICE)
        await node.route(f"<iq type='set' id='d' from='{ALICE}' to='{ROOM}'><query xmlns='{MUC_OWNER}'><destroy/>"
                         "</query></iq>")
        assert alice.of("iq", "result") and ROOM not in muc.rooms
    async with muc_node(tmp_path) as (node, muc):
        carol = node.bind(CAROL)
        await node.route(f"<message type='groupchat' from='{CAROL}' to='{ROOM}'><body>x</body></message>")
        assert error_condition(carol.take()[0]) == "item-not-found"


def test_settings_are_checked() -> None:
    assert "muc" in BUILTIN
    with pytest.raises(ValueError, match="service_domain"):
        module_settings({"muc": {"service_domain": "not a domain {domain}"}})
    with pytest.raises(ValueError, match="create_rooms"):
        module_settings({"muc": {"create_rooms": "nobody"}})


async def test_only_allowed_creators_make_rooms(tmp_path: Path) -> None:
    async with muc_node(tmp_path, create_rooms="admins", admins=["alice@example.com"]) as (node, muc):
        alice, bob = node.bind(ALICE), node.bind(BOB)
        await node.route(join_xml(BOB, "bob", room=f"bobs@{SERVICE}"))
        assert error_condition(bob.take()[0]) == "not-allowed"
        await node.route(join_xml(ALICE, "alice"))
        assert 201 in codes(alice.take()[0])


# -- a region of fake members ---------------------------------------------------------------------------


class Region:
    """Fake members joined by fake links: calls, deliveries to sessions on other members, the
    session tables kept in step; :meth:`kill` is a member dying."""

    def __init__(self) -> None:
        self.nodes: dict[str, FakeNode] = {}
        self.dead: set[str] = set()

    def add(self, node: FakeNode) -> None:
        name = node.services.node
        self.nodes[name] = node
        node.services.calls = _Calls(self, name)  # type: ignore[assignment]
        node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: self._deliver(record, s))

    def alive(self) -> list[FakeNode]:
        return [n for name, n in self.nodes.items() if name not in self.dead]

    def bind(self, name: str, full: str) -> FakeSession:
        session = self.nodes[name].bind(full, available=True)
        for other in self.alive():
            if other is not self.nodes[name]:
                other.table.insert(session.record)
        return session

    def _deliver(self, record: SessionRecord, s: Stanza) -> bool:
        if record.node in self.dead:
            return True
        session = self.nodes[record.node].local.get(record.sid)
        if session is not None:
            session.deliver(s)
        return True

    def kill(self, name: str) -> None:
        self.dead.add(name)
        for node in self.alive():
            dropped = [r for r in node.table if r.node == name]
            for r in dropped:
                node.table.delete(r.jid, r.sid)
            node.hooks.run(Hook.MEMBER_DOWN, name, dropped, False)

    async def settle(self) -> None:
        for _ in range(5):
            for node in self.alive():
                await node.settle()


class _Calls:
    def __init__(self, region: Region, me: str) -> None:
        self.region, self.me = region, me

    def members(self) -> list[str]:
        return sorted(n for n in self.region.nodes if n != self.me and n not in self.region.dead)

    def call(self, node: str, name: str, args: dict[str, Any]) -> bool:
        if node in self.region.dead or node not in self.region.nodes or self.me in self.region.dead:
            return False
        target = self.region.nodes[node].services
        handler = target.call_handlers.get(name)
        if handler is None:  # the member has no such handler (yet): the real link logs and drops it
            return True
        result = handler("", json.loads(json.dumps(args)))  # as over a link
        if inspect.isawaitable(result):
            target.router.spawn(result)
        return True

    async def request(self, node: str, name: str, args: dict[str, Any], timeout: float = 5.0) -> Any:
        if node in self.region.dead or node not in self.region.nodes:
            raise LookupError(f"no cluster link to {node}")
        handler = self.region.nodes[node].services.call_handlers[name]
        try:  # as MemberCalls answers: the other member's error comes back as a LookupError
            result = handler(self.me, json.loads(json.dumps(args)))
            return json.loads(json.dumps(await result if inspect.isawaitable(result) else result))
        except Exception as e:
            raise LookupError(f"{e.__class__.__name__}: {e}") from None

    def send_stanza(self, node: str, kind: str, envelope: dict[str, Any], data: bytes) -> bool:
        return False

    async def wait_acks(self) -> None:
        return None


@contextlib.asynccontextmanager
async def region_of(tmp_path: Path, names: tuple[str, ...]) -> AsyncIterator[tuple[Region, dict[str, Muc]]]:
    region = Region()
    mucs: dict[str, Muc] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            node = await stack.enter_async_context(fake_node(tmp_path, node_name=name))
            region.add(node)
        for name in names:
            mucs[name] = await region.nodes[name].start(Muc, lock_new_rooms=False)
            stack.push_async_callback(mucs[name].stop)
        for name in names:  # the members find each other as on a join
            for other in names:
                if other != name:
                    region.nodes[name].hooks.run(Hook.MEMBER_BACK, other, [])
        yield region, mucs


async def test_a_room_is_sequenced_by_one_member_and_copied_to_the_others(tmp_path: Path) -> None:
    async with region_of(tmp_path, ("n1", "n2", "n3")) as (region, mucs):
        alice, bob = region.bind("n1", ALICE), region.bind("n2", BOB)
        await region.nodes["n1"].route(join_xml(ALICE, "alice"))
        await region.settle()
        home = mucs["n1"].home[ROOM]
        assert all(m.home[ROOM] == home for m in mucs.values())
        await region.nodes["n2"].route(join_xml(BOB, "bob"))
        await region.settle()
        await region.nodes["n2"].route(say_xml(BOB, "hi all"))
        await region.settle()
        assert bodies(alice) == ["hi all"] and bodies(bob) == ["hi all"]
        snaps = [m.rooms[ROOM].snapshot() for m in mucs.values()]
        assert snaps[0] == snaps[1] == snaps[2] and len(snaps[0]["history"]) == 1


async def test_rooms_are_sequenced_by_nodes_not_by_gateways(tmp_path: Path) -> None:
    """A gateway runs the module too (it answers S2S), but while a node runs it, no room is
    sequenced on the gateway: there it would compete with the relaying."""
    async with region_of(tmp_path, ("n1", "n2", "gw")) as (region, mucs):
        op = Op("routes", "insert", "gateway/gw", "gw", {"region": "eu"})  # what the gateway broadcasts
        for node in region.nodes.values():
            node.services.routes.apply(op)
        rooms = [f"room{i}@conference.example.com" for i in range(40)]
        for name, muc in mucs.items():
            homes = {muc.sequencer_of(room) for room in rooms}
            assert homes == {"n1", "n2"}, (name, homes)


async def test_a_room_survives_the_death_of_its_member(tmp_path: Path) -> None:
    async with region_of(tmp_path, ("n1", "n2", "n3")) as (region, mucs):
        # a room sequenced by n1, with an occupant on each member
        room = next(f"r{i}@{SERVICE}" for i in range(100) if _sequencer(f"r{i}@{SERVICE}", mucs) == "n1")
        sessions = {name: region.bind(name, f"{name}user@example.com/res") for name in ("n1", "n2", "n3")}
        for name, s in sessions.items():
            await region.nodes[name].route(join_xml(str(s.record.jid), name, room=room))
            await region.settle()
        await region.nodes["n2"].route(say_xml(str(sessions["n2"].record.jid), "before", room=room))
        await region.settle()
        assert mucs["n2"].home[room] == "n1"
        region.kill("n1")
        await region.settle()
        survivor_home = mucs["n2"].home[room]
        assert survivor_home in ("n2", "n3") and mucs["n3"].home[room] == survivor_home
        for name in ("n2", "n3"):
            gone = [s for s in sessions[name].of("presence", "unavailable") if s.from_ == f"{room}/n1"]
            assert gone and 332 in codes(gone[0])
        await region.nodes["n3"].route(say_xml(str(sessions["n3"].record.jid), "after", room=room))
        await region.settle()
        assert bodies(sessions["n2"]) == ["before", "after"]
        assert set(mucs["n2"].rooms[room].occupants) == {"n2", "n3"} == set(mucs["n3"].rooms[room].occupants)
        late = region.bind("n2", "late@example.com/x")
        await region.nodes["n2"].route(join_xml("late@example.com/x", "late", room=room))
        await region.settle()
        history = [b for s in late.of("message") if (b := s.element.findtext(C + "body"))]
        assert history == ["before", "after"]


async def test_admin_operations_run_on_the_sequencer_from_any_member(tmp_path: Path) -> None:
    async with region_of(tmp_path, ("n1", "n2", "n3")) as (region, mucs):
        room = next(f"a{i}@{SERVICE}" for i in range(100) if _sequencer(f"a{i}@{SERVICE}", mucs) == "n1")

        def query(node: str, name: str) -> Any:
            return region.nodes[node].services.queries[("muc", name)]

        desc = await query("n2", "createInstantRoom")(room=room, owner="alice@example.com", nick="Alice")
        await region.settle()
        assert desc == {"jid": room, "title": room.split("@")[0], "private": False, "usersNumber": 0}
        assert all(m.home[room] == "n1" for m in mucs.values())
        bob = region.bind("n3", BOB)
        await region.nodes["n3"].route(join_xml(BOB, "bob", room=room))
        await region.settle()
        config = await query("n3", "changeRoomConfiguration")(room=room, config={"title": "Ops", "maxUsers": 5,
                                                                     "persistent": True})
        assert config["title"] == "Ops" and config["maxUsers"] == 5
        with pytest.raises(LookupError, match="maxUsers"):
            await query("n2", "changeRoomConfiguration")(room=room, config={"maxUsers": 10**6})
        with pytest.raises(LookupError, match="allowMultipleSession"):
            await query("n2", "changeRoomConfiguration")(room=room, config={"allowMultipleSession": False})
        await query("n2", "setUserAffiliation")(room=room, user="carol@example.com", affiliation="MEMBER")
        await query("n3", "kickUser")(room=room, nick="bob", reason="ops")
        await region.settle()
        assert 307 in codes(bob.of("presence", "unavailable")[-1])
        assert query("n2", "listRoomAffiliations")(room=room) == [
            {"jid": "alice@example.com", "affiliation": "OWNER"}, {"jid": "carol@example.com", "affiliation": "MEMBER"}]
        assert query("n3", "getRoomConfig")(room=room)["title"] == "Ops"
        listed = await query("n2", "listRooms")(mucDomain=SERVICE)
        assert listed["count"] == 1 and listed["rooms"][0]["jid"] == room
        assert await query("n2", "deleteRoom")(room=room, reason="bye") == f"{room} was deleted"
        await region.settle()
        assert all(room not in m.rooms for m in mucs.values())
        with pytest.raises(LookupError):
            query("n1", "listRoomUsers")(room=room)


def _sequencer(room: str, mucs: dict[str, Muc]) -> str:
    return next(iter(mucs.values())).sequencer_of(room)


# -- several regions ---------------------------------------------------------------------------------------------


async def test_the_home_cluster_publishes_the_service_and_the_others_leave_it_to_their_gateways(
        tmp_path: Path) -> None:
    async with fake_node(tmp_path, cluster={"name": "eu"}) as node:
        muc = await node.start(Muc, home_cluster="eu")
        assert [r.key for r in node.services.routes] == [f"service/{SERVICE}/node1"]
        assert Publisher.component_domains(_PublisherView(node)) == [SERVICE]  # type: ignore[arg-type]
        muc.host.release()  # the module stops: its service is withdrawn
        assert not list(node.services.routes)
        await muc.stop()
    async with fake_node(tmp_path, cluster={"name": "us"}) as node:
        muc = await node.start(Muc, home_cluster="eu")
        alice = node.bind(ALICE)
        await node.route(join_xml(ALICE, "alice"))  # no gateway here to relay it to eu
        assert error_condition(alice.take()[0]) == "remote-server-not-found"
        assert not muc.rooms and not list(node.services.routes)
        await muc.stop()


def test_routed_domains_of_components_and_services() -> None:
    assert routed_domain("component/irc.example.com") == "irc.example.com"
    assert routed_domain(f"service/{SERVICE}/eu-n1") == SERVICE
    assert routed_domain("gateway/eu-gw1") is None and routed_domain("service/") is None


class _PublisherView:
    """What :meth:`Publisher.component_domains` reads of a publisher."""

    def __init__(self, node: FakeNode) -> None:
        self.routes = node.services.routes


# -- the archive ---------------------------------------------------------------------------------------------------


def mam_xml(full: str, qid: str, form: str = "", rsm: str = "", room: str = ROOM) -> str:
    x = f"<x xmlns='jabber:x:data' type='submit'>{form}</x>" if form else ""
    s = f"<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>" if rsm else ""
    return (f"<iq type='set' id='{qid}' from='{full}' to='{room}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>"
            f"{x}{s}</query></iq>")


def results(session: FakeSession, qid: str) -> tuple[list[str], Stanza]:
    """The bodies of the archived messages a query returned, and its IQ result."""
    got = session.take()
    bodies = [m.element.findtext(f"{{urn:xmpp:mam:2}}result/{{urn:xmpp:forward:0}}forwarded/{C}message/{C}body")
              for m in got if m.name == "message"]
    iq = next(s for s in got if s.name == "iq" and s.id == qid)
    return [b for b in bodies if b], iq


async def test_an_archived_room_answers_queries_and_keeps_its_history_across_restarts(tmp_path: Path) -> None:
    settings = {"lock_new_rooms": False, "default_archiving": True, "default_persistent": True, "history_length": 3}
    async with muc_node(tmp_path, **settings) as (node, _muc):
        alice, bob, carol = node.bind(ALICE), node.bind(BOB), node.bind(CAROL)
        await node.route(join_xml(ALICE, "alice"))
        assert 170 in codes(alice.of("presence")[-1])  # archiving is on
        await node.route(join_xml(BOB, "bob"))
        for i in range(5):
            await node.route(say_xml(ALICE if i % 2 == 0 else BOB, f"m{i}"))
        bob.take()
        await node.route(mam_xml(BOB, "q1", rsm="<max>2</max>"))
        got, iq = results(bob, "q1")
        fin = iq.element.find("{urn:xmpp:mam:2}fin")
        assert got == ["m0", "m1"] and fin is not None and fin.get("complete") == "false"
        last = fin.findtext("{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}last")
        await node.route(mam_xml(BOB, "q2", rsm=f"<max>10</max><after>{last}</after>"))
        got, iq = results(bob, "q2")
        assert got == ["m2", "m3", "m4"] and iq.element.find("{urn:xmpp:mam:2}fin").get("complete") == "true"
        await node.route(mam_xml(BOB, "q3", rsm="<max>1</max><before/>"))
        assert results(bob, "q3")[0] == ["m4"]
        await node.route(mam_xml(BOB, "q4", form=f"<field var='with'><value>{ROOM}/bob</value></field>"))
        assert results(bob, "q4")[0] == ["m1", "m3"]
        for bad, condition in (("<field var='start'><value>yesterday</value></field>", "bad-request"),
                               ("<field var='colour'><value>red</value></field>", "feature-not-implemented")):
            await node.route(mam_xml(BOB, "qx", form=bad))
            assert error_condition(bob.take()[-1]) == condition
        await node.route(mam_xml(BOB, "qy", rsm="<after>no-such-id</after>"))
        assert error_condition(bob.take()[-1]) == "item-not-found"
        await node.route(f"<iq type='set' id='m' from='{ALICE}' to='{ROOM}'><query xmlns='{MUC}#admin'>"
                         "<item affiliation='outcast' jid='carol@example.com'/></query></iq>")
        await node.route(mam_xml(CAROL, "q5"))
        assert error_condition(carol.take()[-1]) == "forbidden"
    async with muc_node(tmp_path, **settings) as (node, _muc):  # the region restarted: memory is empty
        dave = node.bind("dave@example.com/d")
        await node.route(join_xml("dave@example.com/d", "dave"))
        assert bodies(dave) == ["m2", "m3", "m4"]  # the history comes from the archive


async def test_after_a_partition_both_sides_agree_on_one_sequencer(tmp_path: Path) -> None:
    async with region_of(tmp_path, ("n1", "n2")) as (region, mucs):
        region.bind("n1", ALICE)
        await region.nodes["n1"].route(join_xml(ALICE, "alice"))
        await region.settle()
        # a partition: each side sees the other go, and sequences the room alone
        for me, other in (("n1", "n2"), ("n2", "n1")):
            region.nodes[me].hooks.run(Hook.MEMBER_DOWN, other, [], False)
        assert mucs["n1"].home[ROOM] == "n1" and mucs["n2"].home[ROOM] == "n2"
        for me, other in (("n1", "n2"), ("n2", "n1")):  # the heal: each sends its rooms to the other
            region.nodes[me].hooks.run(Hook.MEMBER_BACK, other, [])
        await region.settle()
        assert mucs["n1"].home[ROOM] == mucs["n2"].home[ROOM]
        assert mucs["n1"].rooms[ROOM].snapshot() == mucs["n2"].rooms[ROOM].snapshot()
