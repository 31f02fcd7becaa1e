"""Property-based fuzzing of JID parsing (cluster_node/xmpp/jid.py, RFC 7622).

Budget and reproducibility: the ``meridian`` hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

from hypothesis import assume, example, given, strategies as st

from cluster_node.xmpp.jid import InvalidJid, Jid, nodeprep, parse_jid

MAX_PART = 1023  # bytes of UTF-8 per part (RFC 7622 §3.1)

# Pieces a JID is made of, separators and the characters the profiles care about included.
jid_alphabet = st.sampled_from("aZ09.-_+@/ [];:'\"&<>\\=,\t\x00\x7fäÅßİΣσς\u0130\u212a\u00a0\u200b\u0301\ufb01"
                               "\U0001f600\ud800")
jidish = st.text(jid_alphabet, max_size=24) | st.text(max_size=24)

ascii_local = st.text(st.sampled_from("abcxyz019._-+"), min_size=1, max_size=20)
ascii_label = st.text(st.sampled_from("abcxyz019-"), min_size=1, max_size=12)
ascii_domain = st.lists(ascii_label, min_size=1, max_size=4).map(".".join)
ascii_resource = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


def part_lengths_ok(jid: Jid) -> bool:
    return all(p is None or 0 < len(p.encode()) <= MAX_PART for p in (jid.local, jid.domain, jid.resource))


@given(jidish)
@example("a@\ud800")  # a lone surrogate (a JSON string can carry one): UnicodeEncodeError, not InvalidJid
@example("\ud800@example.com")
@example("a@example.com/\ud800")
def test_arbitrary_text_is_a_jid_or_invalid_jid(text: str) -> None:
    """Any text parses to a JID whose parts are within the limits, or raises InvalidJid."""
    try:
        jid = parse_jid(text)
    except InvalidJid:
        return
    assert part_lengths_ok(jid)
    str(jid).encode("utf-8")  # a parsed JID is always writable to a stream


@given(jidish)
@example("a@\u0130")  # 'İ'.lower() is 'i' + U+0307, which NFC leaves as two characters
def test_normalisation_is_idempotent(text: str) -> None:
    """parse(str(parse(s))) == parse(s): a normalised JID is a fixed point, so comparing JIDs
    by their string never depends on how often they were parsed."""
    try:
        jid = parse_jid(text)
    except InvalidJid:
        return
    assert parse_jid(str(jid)) == jid
    assert str(parse_jid(str(jid))) == str(jid)


@given(st.none() | ascii_local, ascii_domain, st.none() | ascii_resource)
def test_canonical_ascii_jids_round_trip_unchanged(local: str | None, domain: str, resource: str | None) -> None:
    """A JID already in canonical (lowercase ASCII) form comes back exactly as written."""
    text = (f"{local}@" if local is not None else "") + domain + (f"/{resource}" if resource is not None else "")
    assume(not resource or resource.strip() == resource)
    jid = parse_jid(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)
    assert str(jid) == text
    assert jid.bare == Jid(local, domain, None)
    assert parse_jid(str(jid.bare)) == jid.bare


@given(st.integers(1, 40), st.sampled_from(["a", "é", "\U0001f600"]), st.sampled_from(["local", "domain", "resource"]))
def test_parts_longer_than_1023_bytes_are_refused(extra: int, char: str, part: str) -> None:
    """A part over 1023 bytes of UTF-8 is InvalidJid; one of exactly 1023 bytes (or just under,
    for multi-byte characters) is accepted.  Domain labels are kept at most 63 bytes."""
    width = len(char.encode())
    fits = char * (MAX_PART // width)
    too_long = char * ((MAX_PART + extra) // width + 1)
    if part == "domain":
        label = "a" * 63
        fits_d = ".".join([label] * 16)[:MAX_PART].rstrip(".")
        long_d = ".".join([label] * 17)
        assert parse_jid(f"u@{fits_d}").domain == fits_d
        try:
            parse_jid(f"u@{long_d}")
        except InvalidJid:
            return
        raise AssertionError("a domainpart over 1023 bytes was accepted")
    def make(p: str) -> str:
        return f"{p}@example.com" if part == "local" else f"u@example.com/{p}"

    if char != "\U0001f600" or part == "resource":  # an emoji is not allowed in a localpart at all
        jid = parse_jid(make(fits))
        assert len(((jid.local if part == "local" else jid.resource) or "").encode()) <= MAX_PART
    try:
        parse_jid(make(too_long))
    except InvalidJid:
        return
    raise AssertionError(f"a {part}part of {len(too_long.encode())} bytes was accepted")


@given(jidish)
def test_nodeprep_is_idempotent_or_invalid(text: str) -> None:
    """nodeprep (the localpart profile, also SASL's username) raises InvalidJid only, and its
    output is a fixed point."""
    try:
        out = nodeprep(text)
    except InvalidJid:
        return
    assert nodeprep(out) == out
