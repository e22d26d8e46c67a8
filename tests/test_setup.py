"""setup.py's build_web step: without npm the build warns and goes on (docs/web.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_build_web_without_npm_warns_and_succeeds(tmp_path: Path) -> None:
    # setup.py alone: the step needs no metadata (and the venv's setuptools may be older
    # than the one pyproject.toml builds with).
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    web = tmp_path / "geotrack" / "web"
    web.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "geotrack" / "web" / name, web / name)
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_web"],
        cwd=tmp_path,
        env={"PATH": str(tmp_path / "no-npm-here")},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "WARNING: geotrack's web map library was not built: npm was not found. The relay "
        "works, but its map page will say so: install Node.js and npm, then reinstall geotrack."
    ) in done.stderr
    assert not (web / "vendor").exists()
