"""XML namespaces used across Meridian (RFC 6120, RFC 6121 and the XEPs we implement)."""

__all__ = [
    "STREAM", "CLIENT", "SERVER", "TLS", "SASL", "BIND", "SESSION", "STANZAS", "STREAMS",
    "ROSTER", "ROSTER_VER", "PING", "DISCO_INFO", "DISCO_ITEMS", "VERSION", "REGISTER",
    "REGISTER_FEATURE", "DELAY", "XML", "XML_LANG", "LIMITS", "SASL2", "BIND2", "FAST", "SASL_CB",
]

STREAM = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SERVER = "jabber:server"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"  # RFC 3921 legacy, advertised as optional
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
ROSTER = "jabber:iq:roster"
ROSTER_VER = "urn:xmpp:features:rosterver"
PING = "urn:xmpp:ping"  # XEP-0199
DISCO_INFO = "http://jabber.org/protocol/disco#info"  # XEP-0030
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
VERSION = "jabber:iq:version"  # XEP-0092
REGISTER = "jabber:iq:register"  # XEP-0077
REGISTER_FEATURE = "http://jabber.org/features/iq-register"
DELAY = "urn:xmpp:delay"  # XEP-0203, stamps offline messages (XEP-0160)
XML = "http://www.w3.org/XML/1998/namespace"
XML_LANG = "{%s}lang" % XML
LIMITS = "urn:xmpp:stream-limits:0"  # XEP-0478
SASL2 = "urn:xmpp:sasl:2"  # XEP-0388 Extensible SASL Profile
BIND2 = "urn:xmpp:bind:0"  # XEP-0386 Bind 2
FAST = "urn:xmpp:fast:0"  # XEP-0484 Fast Authentication Streamlining Tokens
SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440 SASL Channel-Binding Type Capability
