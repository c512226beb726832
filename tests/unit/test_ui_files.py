"""The dashboard's page ships in the package and needs nothing from elsewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tlproxy.dashboard import UI_FILES

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "tlproxy" / "ui"
OURS = ("index.html", "app.js", "app.css")


def test_the_package_build_carries_every_file_of_the_page(tmp_path: Path) -> None:
    # What a wheel or sdist holds of the package: setuptools' build_py, from pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "--build-lib", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name, _ in UI_FILES.values():
        built = tmp_path / "tlproxy" / "ui" / name
        assert built.read_bytes() == (UI / name).read_bytes(), name


def test_the_page_loads_only_its_own_files() -> None:
    html = (UI / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and set(references) <= set(UI_FILES)
    for name in OURS:
        text = (UI / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_the_charting_library_is_vendored_with_its_licence() -> None:
    script = (UI / "vendor" / "uPlot.iife.min.js").read_text()
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "The MIT License" in (UI / "vendor" / "LICENSE").read_text()
    assert "1.6.32" in (UI / "vendor" / "README.md").read_text()
