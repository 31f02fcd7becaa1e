"""RFC 6121 Appendix A: subscription state transitions, row by row."""

import pytest

from cluster_node.xmpp.subscription import SubState, inbound, outbound


def S(sub: str = "none", ask: bool = False, pin: bool = False) -> SubState:
    return SubState(sub, ask, pin)


@pytest.mark.parametrize("before, after, route", [
    (S("none"), S("none", ask=True), True),
    (S("none", pin=True), S("none", ask=True, pin=True), True),
    (S("from"), S("from", ask=True), True),
    (S("to"), S("to"), True),          # already subscribed: no ask, still routed
    (S("both"), S("both"), True),
])
def test_outbound_subscribe(before, after, route):
    out = outbound(before, "subscribe")
    assert out.state == after and out.route is route


@pytest.mark.parametrize("before, after, route", [
    (S("none", pin=True), S("from"), True),
    (S("none", ask=True, pin=True), S("from", ask=True), True),
    (S("to", pin=True), S("both"), True),
    (S("none"), S("none"), False),     # nothing to approve: pre-approval not offered
    (S("from"), S("from"), False),
])
def test_outbound_subscribed(before, after, route):
    out = outbound(before, "subscribed")
    assert out.state == after and out.route is route
    assert out.send_presence is route


@pytest.mark.parametrize("before, after", [
    (S("to"), S("none")), (S("both"), S("from")), (S("none", ask=True), S("none")),
])
def test_outbound_unsubscribe(before, after):
    assert outbound(before, "unsubscribe").state == after


@pytest.mark.parametrize("before, after, unavailable", [
    (S("from"), S("none"), True), (S("both"), S("to"), True), (S("none", pin=True), S("none"), False),
])
def test_outbound_unsubscribed(before, after, unavailable):
    out = outbound(before, "unsubscribed")
    assert out.state == after and out.send_unavailable is unavailable


@pytest.mark.parametrize("before, after, route, reply", [
    (S("none"), S("none", pin=True), True, None),
    (S("to"), S("to", pin=True), True, None),
    (S("from"), S("from"), False, "subscribed"),   # already approved: answer for the user
    (S("both"), S("both"), False, "subscribed"),
])
def test_inbound_subscribe(before, after, route, reply):
    out = inbound(before, "subscribe")
    assert (out.state, out.route, out.auto_reply) == (after, route, reply)


@pytest.mark.parametrize("before, after, route", [
    (S("none", ask=True), S("to"), True),
    (S("from", ask=True), S("both"), True),
    (S("none"), S("none"), False),     # never asked: ignored (RFC 6121 §3.1.6)
    (S("to"), S("to"), False),
])
def test_inbound_subscribed(before, after, route):
    out = inbound(before, "subscribed")
    assert (out.state, out.route) == (after, route)


@pytest.mark.parametrize("before, after, route", [
    (S("from"), S("none"), True), (S("both"), S("to"), True),
    (S("none", pin=True), S("none"), True), (S("none"), S("none"), False),
])
def test_inbound_unsubscribe(before, after, route):
    out = inbound(before, "unsubscribe")
    assert (out.state, out.route) == (after, route)


@pytest.mark.parametrize("before, after, route", [
    (S("to"), S("none"), True), (S("both"), S("from"), True),
    (S("none", ask=True), S("none"), True), (S("from"), S("from"), False),
])
def test_inbound_unsubscribed(before, after, route):
    out = inbound(before, "unsubscribed")
    assert (out.state, out.route) == (after, route)
