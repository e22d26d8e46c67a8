"""The geotrack benchmark suite: a real relay process driven by separate load generators.

Run it with ``python -m benchmarks`` (``--help`` lists the options); docs/benchmarks.md
explains the scenarios, the method and the latest results. Nothing here is imported by
geotrack or collected by pytest.
"""
