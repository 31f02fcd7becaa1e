"""A room's output as runs of one stanza to many occupants (sans-IO).

The room sends a broadcast as one copy per occupant session (``shared.with_attrs(to=j)``): the
copies of one broadcast differ only in ``to`` and share their children.  Grouping consecutive
copies back into (stanza, recipients) lets the sequencer hand each broadcast to the routing once
(:meth:`~cluster_node.core.router.Router.route_many`), so a region with occupants receives one
relayed frame per message instead of one per occupant.
"""

from __future__ import annotations

from ...xmpp.stanza import Stanza

__all__ = ["runs"]


def same_but_to(a: Stanza, b: Stanza) -> bool:
    """Whether ``b`` is a copy of ``a`` for another recipient: same name, attributes but ``to``,
    text and the *same* child elements (copies made by ``with_attrs`` share them; equal but
    distinct children are not looked into, so the test stays O(attributes + children))."""
    ea, eb = a.element, b.element
    if ea.tag != eb.tag or ea.text != eb.text or len(ea) != len(eb) or len(ea.attrib) != len(eb.attrib):
        return False
    for key, value in ea.attrib.items():
        if key != "to" and eb.attrib.get(key) != value:
            return False
    return all(x is y for x, y in zip(ea, eb, strict=True))


def runs(out: list[Stanza]) -> list[tuple[Stanza, list[str]]]:
    """``out`` in order, consecutive copies of one stanza joined: (first copy, every recipient)."""
    grouped: list[tuple[Stanza, list[str]]] = []
    for stanza in out:
        to = stanza.to
        if to is None:
            continue
        if grouped and same_but_to(grouped[-1][0], stanza):
            grouped[-1][1].append(to)
        else:
            grouped.append((stanza, [to]))
    return grouped
