"""geotrack's GPX extensions: the vocabulary the GPX writer and the GPX reader share.

What GPX 1.1 has no element for goes into each point's ``<extensions>`` in the ``gt``
namespace: :mod:`geotrack.export.gpx` writes it and :mod:`geotrack.sources.gpx` reads it
back losslessly::

    <gt:speed>1.4</gt:speed> <gt:heading>87.5</gt:heading> <gt:acc>4.0</gt:acc>
    <gt:attr name="hr" type="int">113</gt:attr>    (type: str, int, float, bool, null)
    <gt:attr type="json">["key", "value"]</gt:attr>

A module of its own, with no imports: writing GPX (or any export) must not load the GPX
parser (gpxpy) that reading needs.
"""

from __future__ import annotations

from typing import Final

__all__ = ["GT_NAMESPACE"]

#: The XML namespace of geotrack's point extensions.
GT_NAMESPACE: Final = "https://geotrack.dev/gpx/1"
