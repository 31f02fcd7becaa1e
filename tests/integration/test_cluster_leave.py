"""A member that stops gracefully says so: the others log that it left (INFO), not that it is
down (WARNING), and still drop its records."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cluster import cluster_node, system_info, table_info, wait_until


def test_graceful_stop_is_a_leave_not_a_failure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    a, b = cluster_node(tmp_path, "leave-a", url), cluster_node(tmp_path, "leave-b", url)
    a.start()
    b.start()
    try:
        wait_until(lambda: system_info(a)["joinedNodes"] == ["leave-a", "leave-b"], 30, "the join")
        assert b.stop() == 0
        wait_until(lambda: system_info(a)["joinedNodes"] == ["leave-a"], 15, "the leave")
        assert table_info(a)["sessions"]["nodes"] == ["leave-a"]
        log = a.log()
        assert "cluster member leave-b left" in log, log
        assert "leave-b is down" not in log and "WARNING" not in log.split("joined leave-b", 1)[-1], log
    finally:
        a.stop()
        b.stop()
