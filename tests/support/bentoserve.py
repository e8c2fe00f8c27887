"""A real `bentoml serve service.server.service:ManyLabel` for the tests: start, wait for /readyz, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SERVICE = "service.server.service:ManyLabel"
BENTOML = str(Path(sys.executable).parent / "bentoml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(env: dict[str, str], log: Path, port: int, *, new_session: bool = False) -> subprocess.Popen:
    """The server on 127.0.0.1:`port`, its output appended to `log`; not yet ready."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [BENTOML, "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Return once GET /readyz answers 200; raise with the log's tail if the server exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"bentoml serve was not ready within {timeout} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM (graceful), SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]
