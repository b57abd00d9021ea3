"""Starting ``icl-fungi serve`` in a subprocess on a free loopback port, for the service's tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from icl_fungi.features import DEFAULT_MODEL


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``icl-fungi serve PATH --port P --model DEFAULT_MODEL *args`` in a child process, its output in ``log``.

    The saved retrievers of the tests are built with a loaded model object, so the model is named here.
    """

    def __init__(self, path: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or path.parent / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "icl_fungi.cli", "serve", str(path), "--port", str(self.port), "--model", DEFAULT_MODEL, *args]
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        """Poll ``/readyz`` until it answers 200 (its body); fails with the server's output if the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        """``kill -9`` and reap."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()


class ThreadedServer:
    """A real uvicorn serving ``app`` on a free loopback port, in a thread of this process (no model to load again:
    the app's settings carry the test session's model). ``with ThreadedServer(app) as url: ...``."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        while httpx.get(f"{self.url}/readyz", timeout=30).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(120)


def app_ready(client: Any, timeout: float = 120) -> dict[str, Any]:
    """Poll an in-process app's ``/readyz`` (a ``TestClient``) until it is ready; its body. Fails if loading failed."""
    deadline = time.monotonic() + timeout
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert r.json()["status"] == "loading", r.json()
        time.sleep(0.05)
    assert r.status_code == 200, r.json()
    return r.json()
