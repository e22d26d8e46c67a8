"""Sources of positions to publish: GPX files and simulated movers."""

__all__: list[str] = []
