from cluster_node.core.limits import ConnectionLimiter, Shaper, parser_limit
from cluster_node.xmpp import errors
from cluster_node.xmpp.parser import StreamParser


def test_shaper_allows_burst_then_paces():
    s = Shaper(rate=1000, burst=5000, max_throttle=2.0)
    assert s.consume(5000, now=10.0) == 0.0
    assert s.consume(1000, now=10.0) == 1.0          # one second of debt
    assert s.consume(0, now=11.0) == 0.0             # paid back


def test_shaper_flags_a_sustained_flood_only():
    s = Shaper(rate=1000, burst=1000, max_throttle=2.0)
    t = 0.0
    s.consume(1000, t)
    flagged_at = None
    for _ in range(100):                      # sender always over budget after each pause
        delay = s.consume(2000, t)
        assert delay > 0
        if s.flooding(t):
            flagged_at = t
            break
        t += delay
    assert flagged_at is not None and 2.0 < flagged_at < 6.0
    quiet = Shaper(rate=1000, burst=1000, max_throttle=2.0)
    quiet.consume(1500, 0.0)                  # one burst over, then silence
    assert not quiet.flooding(1.0)
    quiet.consume(10, 60.0)
    assert not quiet.flooding(60.0)


def test_connection_limiter():
    refused: list[str] = []
    lim = ConnectionLimiter(max_total=3, max_per_ip=2, refused=refused.append)
    assert lim.acquire("a") is None and lim.acquire("a") is None
    assert "your address" in lim.acquire("a")
    assert lim.acquire("b") is None
    assert "this server" in lim.acquire("c")
    lim.release("a")
    assert lim.acquire("c") is None
    assert refused == ["limits.max_connections_per_ip", "limits.max_connections"]


def test_connections_waiting_to_authenticate_are_limited():
    refused: list[str] = []
    lim = ConnectionLimiter(max_total=10, max_per_ip=10, max_pre_auth=2, refused=refused.append)
    assert lim.acquire("a") is None and lim.acquire("b") is None
    assert "waiting to authenticate" in lim.acquire("c")
    assert refused == ["limits.max_pre_auth_connections"]
    lim.authenticated()  # one logged in: room for another newcomer
    assert lim.acquire("c") is None
    lim.release("a", pre_auth=False)  # the logged-in one leaves
    assert lim.pre_auth == 2 and lim.total == 2
    lim.release("c")
    assert lim.acquire("d") is None


def test_the_parsers_refusals_are_named_by_their_limits():
    """The parser is sans-IO: the adapters count its refusals by the [limits] setting they gave it."""
    for data, limit in ((b"<message>" + b"x" * 2048, "limits.max_stanza_size"),
                        (b"<a>" * 6, "limits.max_depth")):
        parser = StreamParser(max_stanza_size=1024, max_depth=4)
        parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        try:
            parser.feed(data)
        except errors.StreamError as e:
            assert parser_limit(e) == limit
        else:
            raise AssertionError(f"{data[:20]!r} was accepted")
    assert parser_limit(errors.PolicyViolation("sending too fast")) is None and parser_limit(None) is None
