"""Stream the items of an annotation file, JSON array or JSONL, one position at a time.

    for item in iter_json("VideoInstruct100K.json"):
        ...  # a parsed value, or a SampleError(BAD_JSON) standing in for a bad one

The layout is sniffed from the first non-whitespace byte (a UTF-8 byte-order mark is
skipped), whatever the file is called: ``[`` is a JSON array, ``{`` is JSONL. A JSON
array is streamed with ``ijson`` and never loaded whole, so a multi-GB file costs
memory for one item at a time.

Positions:

- JSONL: one position per non-blank line; blank lines take none. A line that does
  not parse yields ``SampleError(BAD_JSON)`` and reading goes on with the next line.
- JSON array: one position per array element. If the array is malformed (a broken
  element, a file cut short, trailing garbage after ``]``), the position where
  parsing failed yields one ``SampleError(BAD_JSON)`` and reading stops: a
  streaming parser cannot find where the next element starts.

A missing or unreadable file, or one that is neither (it does not start with ``[``
or ``{``), raises :class:`~mmstream.errors.ConfigError`: that is the config's
problem, not one record's. An empty (or all-whitespace) file has no items.
"""
from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator, Literal, Union

import ijson

from ..errors import BAD_JSON, ConfigError, SampleError

Layout = Literal["array", "jsonl", "empty"]

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_CHUNK = 1 << 16


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None


def _find_start(f: BinaryIO, path: str) -> tuple[Layout, int]:
    """Return the layout and the offset of the first non-whitespace byte."""
    offset = 0
    first = True
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as exc:
            raise ConfigError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None
        if not chunk:
            return "empty", offset
        if first and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM):]
            offset += len(_BOM)
        first = False
        stripped = chunk.lstrip(_WHITESPACE)
        if stripped:
            offset += len(chunk) - len(stripped)
            byte = stripped[:1]
            if byte == b"[":
                return "array", offset
            if byte == b"{":
                return "jsonl", offset
            raise ConfigError(
                f"annotation file {path} is neither a JSON array nor JSONL: "
                f"it starts with {byte!r} at byte {offset}, expected '[' or '{{'")
        offset += len(chunk)


def sniff(path: str) -> Layout:
    """Open ``path`` and tell its layout: ``"array"``, ``"jsonl"`` or ``"empty"``.

    Raises :class:`ConfigError` when the file cannot be read or is neither layout.
    """
    with _open(path) as f:
        return _find_start(f, path)[0]


def iter_json(path: str) -> Iterator[Union[Any, SampleError]]:
    """Yield each item of the file at ``path``: its parsed value, or a BAD_JSON error.

    Errors are yielded with ``path`` filled in and no key (the caller knows it).
    """
    with _open(path) as f:
        layout, offset = _find_start(f, path)
        try:
            if layout == "array":
                f.seek(offset)  # past a byte-order mark, which the parser would reject
                yield from _iter_array(f, path)
            elif layout == "jsonl":
                f.seek(0)  # from the top, so that line numbers in messages are right
                yield from _iter_jsonl(f, path)
        except OSError as exc:
            raise ConfigError(f"error reading annotation file {path}: {exc.strerror or exc}") from None


def _iter_array(f: BinaryIO, path: str) -> Iterator[Union[Any, SampleError]]:
    items = ijson.items(f, "item", use_float=True)
    position = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
            yield SampleError(BAD_JSON, f"JSON array malformed at element {position}, "
                              f"rest of the file skipped: {_first_line(exc)}", path=path)
            return
        yield item
        position += 1


def _iter_jsonl(f: BinaryIO, path: str) -> Iterator[Union[Any, SampleError]]:
    for lineno, raw in enumerate(f, start=1):
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if not raw.strip():
            continue
        try:
            yield json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            yield SampleError(BAD_JSON, f"line {lineno}: {_first_line(exc)}", path=path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["iter_json", "sniff", "Layout"]
