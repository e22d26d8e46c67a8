"""Sources of positions to publish: GPX files and simulated movers."""
