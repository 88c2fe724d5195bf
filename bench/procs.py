"""Process handling shared by the benchmark scripts (standard library only)."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def terminate(p: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stops a process started with start_new_session=True and its children: SIGTERM to the
    group, then SIGKILL if it is still there after `timeout` seconds."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout)


def wait_ready(p: subprocess.Popen, what: str, ready, timeout: float, errors: tuple = (OSError,)) -> None:
    """Polls `ready()` every 50 ms until it returns True; raises RuntimeError when `p` exits first
    or `timeout` seconds pass. Exceptions in `errors` count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode} during start")
        try:
            if ready():
                return
        except errors:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so a script's `finally` stops what it started."""
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
