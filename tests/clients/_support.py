"""Helpers for the client tests: the proxy as a subprocess, the offline guard, doc snippets.

Standard library only: the main test run imports this package too (to find out
that it must skip it), in a virtualenv without the client libraries.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DOCS_URL",
    "NOT_CLIENTS_VENV",
    "REPO",
    "Snippet",
    "offline",
    "parse_output",
    "require_clients_venv",
    "running_proxy",
    "snippets",
]

REPO = Path(__file__).resolve().parents[2]

# What every doc snippet calls; the tests rewrite it to the test server's URL.
DOCS_URL = "http://127.0.0.1:8080"

NOT_CLIENTS_VENV = (
    "the client library tests run in their own virtualenv (llama-index needs openai<3): "
    "./scripts/install-clients && .venv-clients/bin/python -m pytest tests/clients"
)


def require_clients_venv() -> None:
    """Skip the calling test module unless it runs in .venv-clients."""
    import pytest

    # llama-index cannot be installed beside openai 3.x, so it marks the
    # clients' virtualenv; langchain-openai alone could be in either.
    pytest.importorskip("llama_index.llms.openai_like", reason=NOT_CLIENTS_VENV)
    pytest.importorskip("langchain_openai", reason=NOT_CLIENTS_VENV)


# -- the proxy ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running_proxy(workdir: Path, *, timeout: float = 30.0) -> Iterator[tuple[str, Path]]:
    """`tlproxy serve` with no config, in `workdir`: yields its URL and its log file.

    The working directory is an empty temporary one, so no `tlproxy.toml` is picked
    up (the proxy serves its built-in simulated upstream) and the ledger file lands
    there. The port is found by binding first; if another process takes it in
    between, the proxy exits and we try another.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLPROXY_")}
    log_path = workdir / "tlproxy.log"
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tlproxy.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline and not _healthy(url):
            time.sleep(0.05)
        if process.poll() is None and _healthy(url):
            break
        _stop(process)
        if "Address already in use" not in log_path.read_text(errors="replace"):
            raise RuntimeError(f"tlproxy serve did not start:\n{_tail(log_path)}")
    else:
        raise RuntimeError(f"tlproxy serve found no free port:\n{_tail(log_path)}")
    try:
        yield url, log_path
    finally:
        code = _stop(process)
        if code not in (0, -signal.SIGTERM):
            raise RuntimeError(f"tlproxy serve exited with {code}:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- offline ------------------------------------------------------------------------


class NetworkBlocked(OSError):
    """A client library tried to reach a host other than this machine."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Refuse every connection that is not to a loopback address.

    The client tests must pass behind a firewall: a library that downloads
    something at run time (tiktoken's encodings, NLTK data, telemetry) fails
    loudly here instead of passing on a machine that happens to be online.
    """
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise NetworkBlocked(f"client tests run offline: connection to {address} refused")
        original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


# -- documentation snippets ---------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    tag: str | None  # from a preceding `<!-- test: TAG ... -->` comment
    label: str  # the rest of that comment
    code: str

    @property
    def id(self) -> str:
        name = self.path.relative_to(REPO).as_posix()
        return f"{name}:{self.line}" + (f"-{self.label}" if self.label else "")


_FENCE = re.compile(r"^\s*```(\w*)\s*$")
_TAG = re.compile(r"^<!--\s*test:\s*(\S+)\s*(.*?)\s*-->\s*$")


def snippets(path: Path) -> list[Snippet]:
    """Every fenced code block of a Markdown file, with the test tag written just before it."""
    found = []
    lines = path.read_text().splitlines()
    index = 0
    tag: tuple[str, str] | None = None
    while index < len(lines):
        line = lines[index]
        if match := _TAG.match(line.strip()):
            tag = (match.group(1), match.group(2))
        elif match := _FENCE.match(line):
            end = index + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            found.append(Snippet(
                path=path, line=index + 1, lang=match.group(1),
                tag=tag[0] if tag else None, label=tag[1] if tag else "",
                code=textwrap.dedent("\n".join(lines[index + 1 : end]) + "\n"),
            ))
            index, tag = end, None
        elif line.strip():
            tag = None  # a tag applies to the block right after it only
        index += 1
    return found


def parse_output(text: str) -> list[Any]:
    """What curl printed: JSON documents one after another, or SSE events.

    Returns the JSON values (for SSE, each event's data, `[DONE]` as a string).
    Raises ValueError when the output is neither.
    """
    text = text.strip()
    if not text:
        raise ValueError("no output")
    if text.startswith("data:"):
        values: list[Any] = []
        for event in re.split(r"\r?\n\r?\n", text):
            data = "\n".join(
                line.removeprefix("data:").removeprefix(" ")
                for line in event.splitlines() if line.startswith("data:")
            )
            if not data:
                raise ValueError(f"an SSE event without data: {event!r}")
            values.append("[DONE]" if data == "[DONE]" else json.loads(data))
        if values[-1] != "[DONE]":
            raise ValueError("the stream does not end with data: [DONE]")
        return values
    decoder = json.JSONDecoder()
    values, position = [], 0
    while position < len(text):
        value, position = decoder.raw_decode(text, position)
        values.append(value)
        while position < len(text) and text[position].isspace():
            position += 1
    return values
