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


def gateway_env(admin_password: str) -> dict:
    """The environment for a benchmarked `comfygate serve`: none of the caller's COMFYGATE_*
    variables (they would change what is measured), the first admin's password given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYGATE_")}
    env["COMFYGATE_ADMIN_PASSWORD"] = admin_password
    return env


def warn_lines(path: str, last: int) -> list[str]:
    """The last `last` WARN/ERROR lines of a log file (cut to 240 characters), for a report."""
    try:
        with open(path, errors="replace") as f:
            lines = [x for x in f.read().splitlines() if " WARN " in x or " ERROR " in x]
    except OSError:
        return []
    return [x[:240] for x in lines[-last:]]
