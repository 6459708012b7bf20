"""NDJSON read as a stream: lines cut from chunks of bytes, each line bounded, none kept after."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fhir_mapping.issues import Issue

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class RefusedLine:
    """A line refused before it was parsed: its HTTP status and why (without its number)."""

    status: int
    issue: Issue


def ndjson_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[str | RefusedLine]:
    """Every line of an NDJSON stream, in order: its text, or why it was refused.

    Lines end at "\\n" only (a "\\r" before it is JSON whitespace, left to the parser); the last
    line needs no "\\n". At most `max_line_bytes` of a line are held: a longer one is skipped to its
    end and refused alone (413 `too-long`), as is one that is not UTF-8 (400 `structure`). A UTF-8
    byte-order mark at the start of the stream is dropped (RFC 8259 §8.1).
    """
    line = bytearray()
    too_long = False
    first = True
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long:
                if len(line) + len(piece) > max_line_bytes:
                    too_long = True
                    line.clear()  # nothing of it is kept
                else:
                    line += piece
            if end < 0:
                break
            yield _finished(line, too_long, first, max_line_bytes)
            line.clear()
            too_long, first, start = False, False, end + 1
    if line or too_long:
        yield _finished(line, too_long, first, max_line_bytes)


def _finished(line: bytearray, too_long: bool, first: bool, limit: int) -> str | RefusedLine:
    if too_long:
        return RefusedLine(
            413, Issue("too-long", f"the line is longer than the limit of {limit} bytes")
        )
    data = bytes(line[len(_BOM) :]) if first and line.startswith(_BOM) else bytes(line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RefusedLine(
            400, Issue("structure", f"the line is not valid UTF-8 (byte {exc.start})")
        )
