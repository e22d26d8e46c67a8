"""Run the CLI as ``python -m geotrack``."""

from geotrack.cli import main

main()
