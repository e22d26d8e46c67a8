"""Build step for the web map: Leaflet from npm into geotrack/web/vendor/leaflet/.

Everything else about the package is in pyproject.toml. ``build_web`` is a sub-command of
``build``, so it runs for wheels (``pip wheel .``, ``python -m build``) and for editable
installs (``pip install -e .``) alike, before ``build_py`` copies the package data. It runs
``npm ci`` in geotrack/web (Leaflet pinned by package.json and package-lock.json) and
copies Leaflet's dist files into geotrack/web/vendor/leaflet/, which git ignores.

Without npm, or when ``npm ci`` fails (offline), the build warns and goes on: the relay
works, and the page says that the map library was not built.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build import build

WEB = Path(__file__).resolve().parent / "geotrack" / "web"
VENDOR = WEB / "vendor" / "leaflet"
#: What the page loads from Leaflet's dist/ folder (with its images).
LEAFLET_FILES = ("leaflet.js", "leaflet.css", "images")


class build_web(Command):
    """Install the web map's npm dependencies and copy them into geotrack/web/vendor/."""

    description = "build the web map's vendor files (Leaflet, from npm)"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []
    #: Set by setuptools for editable installs; the files go into the source tree anyway.
    editable_mode = False

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        if not (WEB / "package-lock.json").is_file():
            return  # not a source tree of geotrack (a wheel being repacked): nothing to do
        npm = shutil.which("npm")
        if npm is None:
            self._warn("npm was not found")
            return
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=WEB,
                check=True,
                stdout=sys.stderr,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            self._warn(f"npm ci failed ({exc})")
            return
        dist = WEB / "node_modules" / "leaflet" / "dist"
        if VENDOR.exists():
            shutil.rmtree(VENDOR)
        VENDOR.mkdir(parents=True)
        for name in LEAFLET_FILES:
            source = dist / name
            if source.is_dir():
                shutil.copytree(source, VENDOR / name)
            else:
                shutil.copy2(source, VENDOR / name)
        shutil.copy2(WEB / "node_modules" / "leaflet" / "LICENSE", VENDOR / "LICENSE")
        print(f"build_web: Leaflet copied into {VENDOR}", file=sys.stderr)

    def _warn(self, reason: str) -> None:
        kept = (VENDOR / "leaflet.js").is_file()
        print(
            f"WARNING: geotrack's web map library was not built: {reason}. "
            + (
                "The Leaflet files built before are kept. "
                if kept
                else "The relay works, but its map page will say so: "
            )
            + "install Node.js and npm, then reinstall geotrack.",
            file=sys.stderr,
        )

    # The sub-command protocol setuptools asks of build steps (editable installs included).
    def get_source_files(self) -> list[str]:
        # Relative to setup.py, as setuptools requires.
        return ["geotrack/web/package.json", "geotrack/web/package-lock.json"]

    def get_outputs(self) -> list[str]:
        return []

    def get_output_mapping(self) -> dict[str, str]:
        return {}


class _build(build):
    # First, so that build_py finds the vendor files to copy as package data.
    sub_commands: ClassVar[list[tuple[str, None]]] = [("build_web", None), *build.sub_commands]


setup(cmdclass={"build": _build, "build_web": build_web})
