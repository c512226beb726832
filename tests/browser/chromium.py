"""A headless chromium driven by selenium, and the proxy running beside the test.

The browser is Debian's ``chromium`` through its ``chromedriver``
(`scripts/ensure-chromium` installs both, as `scripts/ensure-redis` does
redis-server). Without them the browser tests are skipped, saying how to get
them; under CI (``CI`` set) they fail instead, so a broken install cannot
hide behind a skip.

Selenium blocks, so the tests are plain functions and the proxy runs in a
trio loop of its own, in a thread (`ProxyThread`), on a loopback port 0.
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tlproxy.config import Config
from tlproxy.server import Running, serve

__all__ = ["ProxyThread", "chromium", "requires_chromium"]

# What the browser needs here: no sandbox (root in a container), no GPU, and none of
# the background traffic a fresh profile starts (updates, sync, QUIC probes).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--force-device-scale-factor=1")

_MISSING = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
requires_chromium = pytest.mark.skipif(
    bool(_MISSING) and not os.environ.get("CI"),
    reason=f"{' and '.join(_MISSING)} not installed: run ./scripts/ensure-chromium")


@contextmanager
def chromium(downloads: str) -> Iterator[Any]:
    """A headless chromium with a fresh profile, downloading into `downloads`."""
    profile = tempfile.mkdtemp(prefix="tlproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": downloads, "download.prompt_for_download": False})
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class ProxyThread:
    """`tlproxy.server.serve` in a trio loop of its own thread, until `stop`."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._started: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.running: Running | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    async def _main(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                running = await nursery.start(
                    functools.partial(serve, self._config, host="127.0.0.1", port=0))
                self._started.put((running, trio.lowlevel.current_trio_token(),
                                   nursery.cancel_scope))
        except BaseException as exc:
            self._started.put(exc)
            raise

    def start(self) -> Running:
        self._thread.start()
        started = self._started.get(timeout=60)
        if isinstance(started, BaseException):
            raise started
        self.running, self._token, self._scope = started
        return self.running

    def stop(self) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=60)

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url
