"""Running `tlproxy serve` as a real subprocess, for tests of signals and workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, config: Path, *, workers: int = 1, cwd: Path | None = None,
                 log_level: str = "WARNING") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its stdout and stderr are pipes this side reads only at the end.
        env = dict(os.environ, TLPROXY_LOG_LEVEL=log_level)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config),
             "--port", str(self.port), "--workers", str(workers)],
            cwd=cwd or config.parent, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.communicate()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def wait_refused(self, timeout: float = 30.0) -> None:
        """Wait until a new connection is refused: the server has stopped listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=timeout):
                    pass
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the connection was still in the listener's backlog when the
                # listener closed. Either way nothing listens on the port now.
                return
            time.sleep(0.02)
        raise TimeoutError("server still accepts connections")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
