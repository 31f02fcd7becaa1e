"""The c2s stream's transition table in its module docstring matches TRANSITIONS, and every
``self._go(State.X)`` in the stream targets a state TRANSITIONS can reach."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from cluster_node.xmpp import c2s
from cluster_node.xmpp.c2s import TRANSITIONS, State

SOURCE = Path(c2s.__file__).read_text(encoding="utf-8")
STATE_NAMES = {s.name for s in State}


def docstring_rows() -> list[tuple[str, str, str]]:
    """(state, input, next state) of each row of the docstring table: the lines after the dashed
    header line, cut at the columns the dashes mark; the next state is the first word of its column."""
    doc = c2s.__doc__
    assert doc is not None
    lines = doc.splitlines()
    header = [i for i, line in enumerate(lines) if re.fullmatch(r"\s*-+(\s+-+){2}\s*", line)]
    assert len(header) == 1, "expected exactly one dashed header line in the c2s docstring"
    dashes = [m.start() for m in re.finditer(r"-+", lines[header[0]])]
    assert len(dashes) == 3
    rows = []
    for line in lines[header[0] + 1:]:
        if not line.strip():
            continue
        state = line[dashes[0]:dashes[1]].strip()
        input_ = line[dashes[1]:dashes[2]].strip()
        rest = line[dashes[2]:].split()
        assert state and input_ and rest, f"row not in the table's columns: {line!r}"
        rows.append((state, input_, rest[0]))
    return rows


def test_the_docstring_table_is_found():
    rows = docstring_rows()
    assert rows[0] == ("WAIT_HEADER", "stream header", "NEGOTIATING")
    assert len(rows) == len(TRANSITIONS) + 1  # + the "any … CLOSED" line


def test_the_docstring_table_names_only_states():
    for state, _, next_state in docstring_rows():
        assert state in STATE_NAMES | {"any"}, state
        assert next_state in STATE_NAMES, next_state


def test_docstring_table_matches_transitions():
    rows = docstring_rows()
    ends = [r for r in rows if r[0] == "any"]
    assert [(s, n) for s, _, n in ends] == [("any", "CLOSED")]  # the end, outside TRANSITIONS
    documented = Counter((s, n) for s, _, n in rows if s != "any")
    actual = Counter((a.name, b.name) for a, _, b in TRANSITIONS)
    assert documented == actual


def test_docstring_inputs_match_transitions():
    documented = [(s, i, n) for s, i, n in docstring_rows() if s != "any"]
    assert documented == [(a.name, i, b.name) for a, i, b in TRANSITIONS]


def test_closed_is_never_a_transition():
    assert all(State.CLOSED not in (a, b) for a, _, b in TRANSITIONS)


def test_every_go_call_targets_a_next_state_of_transitions():
    targets = re.findall(r"self\._go\(State\.(\w+)\)", SOURCE)
    assert len(targets) >= 10  # the call sites are found at all
    nexts = {b.name for _, _, b in TRANSITIONS}
    assert sorted(set(targets) - nexts) == []
    # and every next state of TRANSITIONS is reached by some call site
    assert nexts <= set(targets)


def test_go_is_only_called_with_literal_states():
    calls = re.findall(r"self\._go\(([^)]*)\)", SOURCE)
    assert calls and all(re.fullmatch(r"State\.\w+", c) for c in calls), calls
