"""What every server the tests start needs: wait until its ports listen, stop it for good."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence

__all__ = ["terminate", "wait_listening"]


def wait_listening(proc: subprocess.Popen[bytes] | None, ports: Sequence[int], timeout: float, what: str,
                   log: Callable[[], str], *, poll: float = 0.1) -> None:
    """Until every port in ``ports`` accepts a connection on 127.0.0.1; the server's log is in the
    error if it exits first or never listens."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not listening on {pending}:\n{log()}")
        time.sleep(poll)


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
