"""A geotrack relay from another git revision, measured beside the current one.

``python -m benchmarks --baseline REV`` extracts REV's tree (``git archive``, so nothing is
registered in the repository and nothing in the checkout is touched) into a temporary
directory and adds the relay kind ``geotrack@<short sha>``: that tree's
``python -m geotrack serve``, run by the same interpreter with the same installed
dependencies. It takes part in every round of scenarios 1-5 next to the current relay, so
the ratio current ÷ baseline is taken under the same machine noise. The directory is
removed when the run ends.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType

from benchmarks.relays import ROOT, RelayKind, SetupError, environment


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False)


class Baseline:
    """REV's source tree in a temporary directory, as a relay kind; a context manager.

    ``rev`` is anything git resolves to a commit (a short sha, a tag, ``HEAD~3``,
    ``origin/main``). The tree is the commit's, not the working tree's: uncommitted
    changes of this checkout are in the current relay only.
    """

    def __init__(self, rev: str) -> None:
        self.rev = rev
        done = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if done.returncode != 0:
            raise SetupError(f"--baseline: {rev!r} is not a commit of this repository")
        self.commit = done.stdout.decode().strip()
        self.short = _git("rev-parse", "--short", self.commit).stdout.decode().strip()
        self.label = f"geotrack@{self.short}"
        self.dir: Path | None = None
        self.kind: RelayKind | None = None

    def __enter__(self) -> RelayKind:
        archive = _git("archive", "--format=tar", self.commit)
        if archive.returncode != 0:
            raise SetupError(f"git archive {self.short} failed: {archive.stderr.decode().strip()}")
        self.dir = Path(tempfile.mkdtemp(prefix=f"geotrack-baseline-{self.short}-"))
        try:
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(self.dir, filter="data")
            tree = self.dir / "src" if (self.dir / "src" / "geotrack").is_dir() else self.dir
            _check_import(tree)
        except BaseException:
            self.cleanup()
            raise
        self.kind = RelayKind(
            self.label, "geotrack", f"geotrack serve at {self.short} (baseline)", tree=tree
        )
        return self.kind

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the extracted tree (idempotent)."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def to_json(self) -> dict[str, str]:
        return {"rev": self.rev, "commit": self.commit, "label": self.label}


def _check_import(tree: Path) -> None:
    """Fail unless a relay started the way :class:`RelayProcess` starts it imports ``tree``'s code.

    The venv's editable install of this checkout must not win over the baseline tree:
    a silent mix-up would measure the current code twice and report "no change".
    """
    done = subprocess.run(
        [sys.executable, "-c", "import geotrack; print(geotrack.__file__)"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=False,
    )
    where = Path(done.stdout.strip() or ".").resolve()
    if done.returncode != 0 or not where.is_relative_to(tree.resolve()):
        problem = done.stderr.strip()[-800:] or f"geotrack imported from {where}"
        raise SetupError(f"the baseline tree {tree} does not import as geotrack: {problem}")
