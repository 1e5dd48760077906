"""Kill a real subprocess with SIGKILL once it has written a given file (for resume tests)."""

import signal
import time
from pathlib import Path


def kill_when_exists(proc, path: Path, timeout: float = 600, poll: float = 0.01) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
