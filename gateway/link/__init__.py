"""The inter-region link: gateways of distinct regions exchanging stanzas (docs/architecture.md, "Global distribution").

Layers, bottom up (only :mod:`.tls`, :mod:`.connection`, :mod:`.server` and :mod:`.pool` do I/O):

* :mod:`.frames` — the wire format: length-prefixed frames, stanza bytes carried untouched;
* :mod:`.protocol` — :class:`~.protocol.RegionLink`, one connection as a sans-IO state machine;
* :mod:`.dedup` — the receiver's bounded window of recently seen stanza ids;
* :mod:`.errors` — what a sender is told when a stanza cannot be relayed (XMPP conditions);
* :mod:`.tls` — mutual TLS against the inter-region CA (and a small CA for operators without a PKI);
* :mod:`.connection`, :mod:`.server`, :mod:`.pool` — the asyncio adapters: one connection, the
  listening :class:`~.server.LinkServer` and one dialling :class:`~.pool.RegionPool`
  per remote region (both importable from :mod:`.pool`).
"""

__all__: list[str] = []
