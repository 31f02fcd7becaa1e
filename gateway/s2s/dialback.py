"""Server dialback keys (XEP-0185) and the dialback elements (XEP-0220), sans-IO.

A key proves that the originating server controls the authoritative server for its domain:
whoever asks that server to verify gets ``valid`` only if the key was made with its secret, for
this pair of domains and this stream.  Every gateway serving a domain must share the secret.
"""

from __future__ import annotations

import hashlib
import hmac

from cluster_node.xmpp.stanza import escape_attr, escape_text

__all__ = ["NS", "FEATURE", "dialback_key", "keys_equal", "result_request", "result_response", "result_error",
           "verify_request", "verify_response"]

NS = "jabber:server:dialback"
FEATURE = "urn:xmpp:features:dialback"


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §3: HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' stream id), hex."""
    keyed = hashlib.sha256(secret.encode()).hexdigest().encode()
    text = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(keyed, text, hashlib.sha256).hexdigest()


def keys_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.strip().encode(), b.strip().encode())


def result_request(originating: str, receiving: str, key: str) -> bytes:
    """XEP-0220 §2.1.1: the originating server asks to be let in."""
    return (f"<db:result from='{escape_attr(originating)}' to='{escape_attr(receiving)}'>"
            f"{escape_text(key)}</db:result>").encode()


def result_response(receiving: str, originating: str, valid: bool) -> bytes:
    """XEP-0220 §2.1.4: the receiving server's verdict."""
    kind = "valid" if valid else "invalid"
    return f"<db:result from='{escape_attr(receiving)}' to='{escape_attr(originating)}' type='{kind}'/>".encode()


def result_error(receiving: str, originating: str, condition: str = "remote-server-timeout") -> bytes:
    """XEP-0220 §2.4: no verdict (the authoritative server did not answer in time) — a temporary
    error, so the originating server tries again later rather than giving up on us."""
    return (f"<db:result from='{escape_attr(receiving)}' to='{escape_attr(originating)}' type='error'>"
            f"<error type='wait'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            "</db:result>").encode()


def verify_request(receiving: str, originating: str, stream_id: str, key: str) -> bytes:
    """XEP-0220 §2.1.2: the receiving server asks the authoritative server about a key."""
    return (f"<db:verify from='{escape_attr(receiving)}' to='{escape_attr(originating)}' "
            f"id='{escape_attr(stream_id)}'>{escape_text(key)}</db:verify>").encode()


def verify_response(originating: str, receiving: str, stream_id: str, valid: bool) -> bytes:
    """XEP-0220 §2.1.3: the authoritative server's answer."""
    kind = "valid" if valid else "invalid"
    return (f"<db:verify from='{escape_attr(originating)}' to='{escape_attr(receiving)}' "
            f"id='{escape_attr(stream_id)}' type='{kind}'/>").encode()
