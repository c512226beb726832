"""`tlproxy serve` on a config it refuses: a message with the line, an exit status, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
admin_keys = ["my-admin-key"]

[server]
port = 0
"""


def test_serve_refuses_a_plain_admin_key_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config), "--workers", "1"],
        cwd=tmp_path, env=dict(os.environ, TLPROXY_LOG_LEVEL="WARNING"),
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"{config}:1: admin_keys[0]: expected 'sha256:'" in done.stderr
    assert f"{config}: models: the config defines no model" in done.stderr
    assert "Traceback" not in done.stderr
    assert "my-admin-key" not in done.stderr


def test_serve_names_a_key_store_it_cannot_open_without_a_traceback(tmp_path: Path) -> None:
    # Refused by the config check where the directory is seen to be unwritable,
    # else by the key store when the server starts (root may "write" in /proc).
    config = tmp_path / "tlproxy.toml"
    config.write_text('keys_db = "/proc/no-such-dir/keys.db"\n[ledger]\nenabled = false\n'
                      '[providers.sim]\nkind = "sim"\n'
                      '[[models]]\nid = "m"\nprovider = "sim"\ntier = "economy"\n')
    done = subprocess.run(
        [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config), "--workers", "1",
         "--port", "0"],
        cwd=tmp_path, env=dict(os.environ, TLPROXY_LOG_LEVEL="WARNING"),
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "keys_db: " in done.stderr and "/proc/no-such-dir" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_says_so_without_a_traceback(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text('[ledger]\nenabled = false\n[providers.sim]\nkind = "sim"\n'
                      '[[models]]\nid = "m"\nprovider = "sim"\ntier = "economy"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tlproxy.cli", "serve", "--config", str(config),
             "--workers", workers, "--port", str(port)],
            cwd=tmp_path, env=dict(os.environ, TLPROXY_LOG_LEVEL="WARNING"),
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"tlproxy: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
