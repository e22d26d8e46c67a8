"""Frames: what a publisher sends, what a relay answers and pushes (sans-I/O).

A publish frame is one Position or an array of 1 to ``MAX_BATCH`` of them, answered by one
:class:`Ack` (or, when the frame as a whole is unusable, an error frame); a subscriber gets
arrays of positions. :func:`decode_frame` is the hot path of ingestion: a frame of valid
positions is decoded and checked in one pass in C, and only when something is wrong does a
slower per-position path run, to name the bad field of each bad position while keeping the
good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from geotrack.errors import FrameError
from geotrack.schema.position import Position, _convert, _describe, _utf8

__all__ = [
    "MAX_BATCH",
    "Ack",
    "ParsedFrame",
    "Rejection",
    "decode_ack",
    "decode_frame",
    "decode_positions",
    "encode_ack",
    "encode_batch",
    "encode_error",
    "encode_position",
    "json_type",
]

MAX_BATCH: Final = 1000


class Rejection(msgspec.Struct):
    """One position of a frame that failed validation."""

    index: int
    error: str


class Ack(msgspec.Struct, tag_field="type", tag="ack"):
    """The answer to one publish frame, sent after its valid positions are stored."""

    stored: int
    duplicates: int
    rejected: list[Rejection] = msgspec.field(default_factory=list)


class _ErrorFrame(msgspec.Struct, tag_field="type", tag="error"):
    error: str


@dataclass(slots=True)
class ParsedFrame:
    """What one publish frame holds: its valid positions and its rejections.

    ``indexes[i]`` is the place in the frame of ``positions[i]``; ``count`` is the number of
    positions the frame held, valid or not.
    """

    positions: list[Position]
    indexes: list[int]
    rejected: list[Rejection]
    count: int


_encoder: Final = msgspec.json.Encoder()
_fast_decoder: Final = msgspec.json.Decoder(Position | list[Position])


def _check_size(n: int, limit: int = MAX_BATCH) -> None:
    if n == 0:
        raise FrameError(f"a batch must hold 1 to {limit} positions; got an empty array")
    if n > limit:
        raise FrameError(f"a batch must hold 1 to {limit} positions; got {n}")


def decode_frame(data: bytes | str, max_batch: int = MAX_BATCH) -> ParsedFrame:
    """Parse one publish frame: a Position or an array of 1 to ``max_batch`` Positions.

    Raises FrameError when the frame as a whole is unusable (not JSON, neither an object
    nor an array, an empty or too large array). Otherwise every position is either valid
    or rejected with a reason naming its field; valid ones are returned whatever the rest.
    """
    try:
        decoded = _fast_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        # msgspec before 0.23 raises UnicodeDecodeError for bytes that are not UTF-8.
        return _decode_slow(data, max_batch)
    if isinstance(decoded, Position):
        return ParsedFrame([decoded], [0], [], 1)
    _check_size(len(decoded), max_batch)
    return ParsedFrame(decoded, list(range(len(decoded))), [], len(decoded))


def _decode_slow(data: bytes | str, max_batch: int) -> ParsedFrame:
    # The lenient stdlib parser accepts NaN and Infinity literals (Python's json.dumps
    # writes them), so such a value is reported against its field instead of failing the
    # whole frame, and the frame's valid positions are still stored.
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FrameError(f"frame is not valid JSON: {reason}") from None
    items: list[Any]
    if isinstance(value, dict):
        items = [value]
    elif isinstance(value, list):
        _check_size(len(value), max_batch)
        items = value
    else:
        raise FrameError(
            f"a frame must be a JSON object or an array of objects, not {json_type(value)}"
        )
    positions: list[Position] = []
    indexes: list[int] = []
    rejected: list[Rejection] = []
    for i, item in enumerate(items):
        try:
            positions.append(_convert(item))
            indexes.append(i)
        except msgspec.ValidationError as exc:
            rejected.append(Rejection(i, _describe(exc)))
        except RecursionError:
            rejected.append(Rejection(i, "position: nested too deeply"))
        except UnicodeEncodeError:
            # msgspec cannot even report on a string with a lone surrogate (\ud800).
            rejected.append(Rejection(i, _surrogate_error(item)))
    return ParsedFrame(positions, indexes, rejected, len(items))


def _surrogate_error(item: object) -> str:
    """The rejection of a position with a lone surrogate, naming the field holding it."""
    where = "position"
    if isinstance(item, dict):
        for key, value in item.items():
            text = json.dumps([key, value], ensure_ascii=False)
            if not _utf8(text):
                where = key if _utf8(str(key)) else "position"
                break
    return f"{where}: strings must be valid Unicode (no lone surrogates)"


def json_type(value: object) -> str:
    """How to name a decoded JSON value's type in an error message ("a number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def encode_position(position: Position) -> bytes:
    """The wire form of one position (canonical ``ts``, absent fields omitted)."""
    return _encoder.encode(position)


def encode_batch(encoded: Iterable[bytes]) -> bytes:
    """Join already-encoded positions into one JSON array frame."""
    return b"[" + b",".join(encoded) + b"]"


def encode_ack(ack: Ack) -> bytes:
    """The wire form of an ack."""
    return _encoder.encode(ack)


def encode_error(message: str) -> bytes:
    """The wire form of a frame-level error."""
    return _encoder.encode(_ErrorFrame(message))


def decode_positions(data: bytes | str) -> list[Position]:
    """Parse what a relay sends a subscriber: a JSON array of positions (or one position)."""
    decoded = _fast_decoder.decode(data)
    return [decoded] if isinstance(decoded, Position) else decoded


def decode_ack(data: bytes | str) -> Ack:
    """Parse a relay's answer to a publish frame; raises FrameError for an error frame."""
    reply = msgspec.json.decode(data, type=Ack | _ErrorFrame)
    if isinstance(reply, _ErrorFrame):
        raise FrameError(reply.error)
    return reply
