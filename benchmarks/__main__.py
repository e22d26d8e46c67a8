"""``python -m benchmarks``: run the suite (see :mod:`benchmarks.cli`)."""

from benchmarks.cli import main

raise SystemExit(main())
