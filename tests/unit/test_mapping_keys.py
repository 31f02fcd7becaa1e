"""The mapping's key layout: one hash slot per multi-key operation (Redis Cluster), and the
Location wire format, which must never crash on what it finds in Redis."""

from __future__ import annotations

import json

import pytest
from redis.crc import key_slot

from gateway.mapping import (
    REGIONS_KEY,
    Location,
    domain_key,
    endpoints_key,
    resources_key,
    split_full_jid,
    status_key,
)


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_layout() -> None:
    assert resources_key("alice@example.com") == "gd:{alice@example.com}:res"
    assert domain_key("muc.example.com") == "gd:domain:{muc.example.com}"
    assert endpoints_key("eu") == "gd:endpoints:{eu}"
    assert status_key("eu") == "gd:status:{eu}"
    assert REGIONS_KEY == "gd:regions"


def test_region_keys_share_a_slot() -> None:
    for region in ("eu", "us-east-1", "ap"):
        assert slot(endpoints_key(region)) == slot(status_key(region))


def test_hash_tag_is_the_jid() -> None:
    assert slot(resources_key("alice@example.com")) == slot("{alice@example.com}")
    assert slot(resources_key("bob@example.com")) == slot("bob@example.com")


def test_split_full_jid() -> None:
    assert split_full_jid("alice@x/phone") == ("alice@x", "phone")
    assert split_full_jid("alice@x/a/b") == ("alice@x", "a/b")  # RFC 7622 §3.1
    assert split_full_jid("x.example/res") == ("x.example", "res")
    for bad in ("alice@x", "alice@x/", "/res", ""):
        with pytest.raises(ValueError):
            split_full_jid(bad)


def test_location_round_trip() -> None:
    loc = Location("eu", "node1", "s1", 1700000000.123456, priority=-3, available=True, expires_at=1700000120.5)
    assert Location.decode(loc.encode()) == loc
    assert Location.decode(loc.encode().encode()) == loc
    assert len(loc.encode()) < 100


def test_location_ignores_unknown_fields() -> None:
    obj = json.loads(Location("eu", "n", "s", 1.0, expires_at=2.0).encode())
    obj["future"] = {"x": 1}
    assert Location.decode(json.dumps(obj)) == Location("eu", "n", "s", 1.0, expires_at=2.0)


@pytest.mark.parametrize("raw", [
    b"\xff\xfe", "", "not json", "[1,2]", "null", "42", '{"r":"eu"}',
    '{"r":"eu","n":"n","s":"s","c":"1","e":2}', '{"r":"eu","n":"n","s":"s","c":1,"e":true}',
    '{"r":1,"n":"n","s":"s","c":1,"e":2}', '{"r":"eu","n":"n","s":"s","c":1,"e":2,"p":"high"}',
    '{"r":"eu","n":"n","s":"s","c":1,"e":2,"a":"yes"}', '{"r":"eu","n":"n","s":"s","c":NaN,"e":2}',
    '{"r":"eu","n":"n","s":"s","c":1,"e":Infinity}', '{"r":"eu","n":"n","s":"s","c":1e999,"e":2}',
])
def test_malformed_location_is_none(raw: str | bytes) -> None:
    assert Location.decode(raw) is None
