"""A room's output as runs: one stanza to many occupants, or many stanzas to one (sans-IO).

The room sends a broadcast as one copy per occupant session (``shared.with_attrs(to=j)``): the
copies of one broadcast differ only in ``to`` and share their children.  A join sends the joiner
many different stanzas in a row: every occupant's presence, its own, the history, the subject.
Grouping consecutive copies back into ([stanza], recipients), and consecutive stanzas to one
recipient into (stanzas, [recipient]), lets the sequencer hand each to the routing as one run
(:meth:`~cluster_node.core.router.Router.route_run`): a region with occupants receives one relayed
frame per message, a joiner in another region a few per join, instead of one per copy.
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


def runs(out: list[Stanza]) -> list[tuple[list[Stanza], list[str]]]:
    """``out`` in order as runs (stanzas, recipients), each recipient of a run to get every one of
    its stanzas in order: consecutive copies of one stanza joined ([first copy], every recipient),
    consecutive stanzas to one recipient joined (the stanzas, [recipient]).  Concatenating each
    recipient's copies run after run gives back exactly what ``out`` sent it, in order."""
    grouped: list[tuple[list[Stanza], list[str]]] = []
    for stanza in out:
        to = stanza.to
        if to is None:
            continue
        if grouped:
            stanzas, recipients = grouped[-1]
            if len(stanzas) == 1 and same_but_to(stanzas[0], stanza):
                recipients.append(to)
                continue
            if recipients == [to]:
                stanzas.append(stanza)
                continue
        grouped.append(([stanza], [to]))
    return grouped
