"""Server-to-server federation (RFC 6120 §13, XEP-0220 dialback, XEP-0178 SASL EXTERNAL).

Sans-IO cores: :mod:`.dialback` (keys), :mod:`.stream` (the two stream state machines).
Adapters: :mod:`.resolver` (SRV with dnspython), :mod:`.tls`, :mod:`.service` (outgoing streams,
the 5269 listener, queues, bounces).
"""
