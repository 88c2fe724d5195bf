"""Process handling shared by the benchmark scripts (standard library only)."""
from __future__ import annotations

import os
import signal
import subprocess


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
