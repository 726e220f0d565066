"""Stream the items of an annotation file, JSON array or JSONL, one position at a time,
with the byte span each came from, so that one record can be read again later without
reading the file again.

    for item, span in scan("VideoInstruct100K.json"):
        ...  # a parsed value, or a SampleError standing in for an unreadable item
    with open(path, "rb") as f:
        again = read_span(f, span)      # the same item (or the same error) again

The layout is sniffed from the first non-whitespace byte (a UTF-8 byte-order mark is
skipped), whatever the file is called: ``[`` is a JSON array, ``{`` is JSONL. A JSON
array is read in chunks of :data:`CHUNK` bytes and never loaded whole: a multi-GB file
costs memory for a chunk and one element at a time.

Positions:

- JSONL: one position per non-blank line; blank lines take none. A line that does
  not parse is ``bad_json`` and reading goes on with the next line.
- JSON array: one position per element. A malformed element is ``bad_json`` (its
  byte offset in the message) and reading resynchronises at the next element
  boundary: the next ``,`` followed by ``{`` from which an object parses and is
  followed by ``,`` or ``]``. A boundary passed on the way that does not parse is
  one more ``bad_json`` element. If nothing parses up to the end of the file (a file
  cut short, or damage that runs to its end), every position of that tail is
  ``unreadable_tail``, so that kept + dropped still accounts for the file.
  Anything but whitespace after the closing ``]`` is one ``bad_json`` position.

A missing or unreadable file, or one that is neither (it does not start with ``[``
or ``{``), raises :class:`~mmstream.errors.ConfigError`: that is the config's
problem, not one record's. An empty (or all-whitespace) file has no items.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Literal, Optional, Union

from ..errors import BAD_JSON, UNREADABLE_TAIL, ConfigError, SampleError

Layout = Literal["array", "jsonl", "empty"]

log = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_WS_CHARS = " \t\r\n"
#: Bytes read at a time; an element is parsed only with this much text after it in
#: hand (or the end of the file), so a failed parse of a smaller element is real damage.
CHUNK = 1 << 18
#: Where a following object element may start (a resynchronisation candidate): a ``,``
#: then ``{`` and its first key's quote (or ``}``). Inside a well-formed string a quote is
#: always escaped, so this cannot match in the text of a valid element.
_BOUNDARY = re.compile(r",[ \t\r\n]*\{[ \t\r\n]*[\"}]")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Span:
    """Where one position's text lies in its file. ``status`` is ``ok``, ``bad_json``
    or ``unreadable_tail``; a bad position is not parsed again."""

    offset: int
    length: int
    status: str = "ok"


def _open(path: str) -> BinaryIO:
    try:
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else (
                "is not a regular file" if os.path.exists(path) else "does not exist")
            raise ConfigError(f"cannot read annotation file {path}: it {what}")
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None


def _find_start(f: BinaryIO, path: str) -> tuple[Layout, int]:
    """Return the layout and the offset of the first non-whitespace byte."""
    offset = 0
    first = True
    while True:
        try:
            chunk = f.read(1 << 16)
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


Item = Union[Any, SampleError]


def scan(path: str) -> Iterator[tuple[Item, Span]]:
    """Yield ``(item, span)`` for each position of the file at ``path``: the parsed value
    (or a ``bad_json`` / ``unreadable_tail`` error, with ``path`` and no key) and where
    it lies."""
    with _open(path) as f:
        layout, offset = _find_start(f, path)
        try:
            if layout == "array":
                f.seek(offset + 1)  # past the byte-order mark and the '['
                yield from _ArrayScanner(f, path, offset + 1).items()
            elif layout == "jsonl":
                f.seek(0)  # from the top, so that line numbers in messages are right
                yield from _scan_jsonl(f, path)
        except OSError as exc:
            raise ConfigError(f"error reading annotation file {path}: {exc.strerror or exc}") from None


def iter_json(path: str) -> Iterator[Item]:
    """The items of :func:`scan` without their spans."""
    for item, _ in scan(path):
        yield item


def read_span(f: BinaryIO, span: Span, path: str = "") -> Item:
    """The item at ``span`` of the open file ``f``, parsed again (what :func:`scan` gave)."""
    if span.status == UNREADABLE_TAIL:
        return SampleError(UNREADABLE_TAIL, f"unreadable from byte {span.offset} to the end of the file", path=path)
    data = os.pread(f.fileno(), span.length, span.offset)
    if span.status == BAD_JSON:
        return SampleError(BAD_JSON, f"at byte {span.offset}: {_parse_error(data)}", path=path)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # the file changed since it was scanned
        return SampleError(BAD_JSON, f"at byte {span.offset}: {_first_line(exc)} (has the file changed?)", path=path)


def _parse_error(data: bytes) -> str:
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _first_line(exc)
    return "not followed by ',' or ']'"


# -- JSONL ----------------------------------------------------------------------------

def _scan_jsonl(f: BinaryIO, path: str) -> Iterator[tuple[Item, Span]]:
    offset = 0
    for lineno, raw in enumerate(f, start=1):
        start, size = offset, len(raw)
        offset += size
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
            start += len(_BOM)
        body = raw.rstrip(b"\r\n")
        if not body.strip():
            continue
        span = Span(start, len(body))
        try:
            yield json.loads(body.decode("utf-8")), span
        except (UnicodeDecodeError, ValueError) as exc:
            yield SampleError(BAD_JSON, f"line {lineno}: {_first_line(exc)}", path=path), Span(start, len(body), BAD_JSON)


# -- JSON array -----------------------------------------------------------------------

class _ArrayScanner:
    """Elements of a JSON array from a file positioned just after its ``[``.

    ``text`` holds the file's text from byte ``start`` on (decoded with
    ``surrogateescape``, so every byte maps back); text before the element being
    parsed is dropped as reading goes on, so memory stays at about two chunks plus
    the largest element.
    """

    def __init__(self, f: BinaryIO, path: str, start: int):
        self.f = f
        self.path = path
        self.text = ""
        self.start = start  # byte offset of text[0]
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._ascii = True  # text[0:] is ASCII: characters are bytes
        self._mark = (0, start)  # (character index, byte offset) known to correspond

    # -- buffer --------------------------------------------------------------------
    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(CHUNK)
        if not data:
            self.text += self._decoder.decode(b"", final=True)
            self.eof = True
            return False
        self._ascii = self._ascii and data.isascii()
        self.text += self._decoder.decode(data)
        return True

    def _ahead(self, i: int) -> None:
        """Make sure a chunk of text after ``i`` is in hand (or the end of the file)."""
        while not self.eof and len(self.text) - i < CHUNK:
            self._more()

    def _byte(self, i: int) -> int:
        """Byte offset of character ``i`` (at or after the last one asked for)."""
        if self._ascii:
            return self.start + i
        ci, bi = self._mark
        if i < ci:
            ci, bi = 0, self.start
        bi += len(self.text[ci:i].encode("utf-8", "surrogateescape"))
        self._mark = (i, bi)
        return bi

    def _forget(self, i: int) -> int:
        """Drop the text before ``i`` once it is large; returns ``i``'s new index."""
        if i < CHUNK:
            return i
        self.start = self._byte(i)
        self.text = self.text[i:]
        self._ascii = self.text.isascii()
        self._mark = (0, self.start)
        return 0

    def _skip_ws(self, i: int) -> int:
        while True:
            n = len(self.text)
            while i < n and self.text[i] in _WS_CHARS:
                i += 1
            if i < n or not self._more():
                return i

    # -- elements ------------------------------------------------------------------
    def _decode(self, i: int) -> tuple[Any, int]:
        """``raw_decode`` at ``i``, reading on while the element is merely cut by the
        end of the text in hand (an element longer than a chunk)."""
        while True:
            self._ahead(i)
            try:
                return _DECODER.raw_decode(self.text, i)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.text.rstrip(_WS_CHARS)) or exc.msg.startswith("Unterminated string")
                if self.eof or not cut or not self._more():
                    raise

    def _span(self, i: int, j: int) -> Span:
        a = self._byte(i)
        return Span(a, self._byte(j) - a)

    def _element_ends(self, j: int) -> Optional[int]:
        """After a parsed value ending at ``j``: the index of the ``,``/``]`` that follows,
        or None when something else does."""
        k = self._skip_ws(j)
        if k < len(self.text) and self.text[k] in ",]":
            return k
        return None

    def items(self) -> Iterator[tuple[Item, Span]]:
        i: Optional[int] = 0
        while i is not None:
            i = self._forget(self._skip_ws(i))
            if i >= len(self.text):
                log.warning("%s: the JSON array is not closed (the file ends after an element)", self.path)
                return
            if self.text[i] == "]":
                yield from self._trailing(i + 1)
                return
            try:
                value, j = self._decode(i)
            except json.JSONDecodeError as exc:
                i = yield from self._resync(i, _first_line(exc))
                continue
            k = self._element_ends(j)
            if k is None:
                nxt = self._skip_ws(j)
                if nxt < len(self.text) and self.text[nxt] in "{[":  # a missing ',': nothing is lost
                    log.warning("%s: missing ',' between array elements at byte %d", self.path, self._byte(j))
                    yield self._checked(value, i, j)
                    i = nxt
                    continue
                i = yield from self._resync(i, f"unexpected data after the element at byte {self._byte(j)}")
                continue
            yield self._checked(value, i, j)
            if self.text[k] == "]":
                yield from self._trailing(k + 1)
                return
            i = k + 1

    def _checked(self, value: Any, i: int, j: int) -> tuple[Item, Span]:
        span = self._span(i, j)
        if not self._ascii:
            try:
                self.text[i:j].encode("utf-8")
            except UnicodeEncodeError:
                return self._bad(span.offset, span.offset + span.length, "not valid UTF-8")
        return value, span

    def _bad(self, a: int, b: int, why: str) -> tuple[SampleError, Span]:
        log.warning("%s: array element at byte %d is not valid JSON (%s); reading on at the next element",
                    self.path, a, why)
        return (SampleError(BAD_JSON, f"array element at byte {a}: {why}", path=self.path),
                Span(a, b - a, BAD_JSON))

    def _resync(self, i: int, why: str) -> Iterator[tuple[Item, Span]]:
        """From a malformed element at ``i``: skip to the next boundary where an object
        parses, yielding one ``bad_json`` per element passed. Returns the index to read
        on from, or None when nothing parses up to the end (the tail is yielded as
        ``unreadable_tail``)."""
        bad = [(self._byte(i), why)]  # byte offset of each element passed, and why it failed
        search = i + 1
        while True:
            m = _BOUNDARY.search(self.text, search)
            if m is None:
                search = self._forget(max(search, len(self.text) - 64))  # a boundary may straddle chunks
                if not self._more():
                    closed = self.text.rstrip(_WS_CHARS)
                    if closed.endswith("]"):  # the array is closed: its last elements are bad, not a lost tail
                        ends = [b for b, _ in bad[1:]] + [self._byte(len(closed) - 1)]
                        for (a, reason), b in zip(bad, ends):
                            yield self._bad(a, b, reason)
                        return None
                    for offset, _ in bad:
                        log.warning("%s: cannot read the JSON array from byte %d on; position counted as %s",
                                    self.path, offset, UNREADABLE_TAIL)
                        yield (SampleError(UNREADABLE_TAIL, f"unreadable from byte {offset} to the end of the "
                                           f"file", path=self.path), Span(offset, -1, UNREADABLE_TAIL))
                    return None
                continue
            obj = self.text.index("{", m.start())
            try:
                _, j = self._decode(obj)
                good, why = self._element_ends(j) is not None, "not followed by ',' or ']'"
            except json.JSONDecodeError as exc:
                good, why = False, _first_line(exc)
            if good:
                ends = [b for b, _ in bad[1:]] + [self._byte(m.start())]
                for (a, reason), b in zip(bad, ends):
                    yield self._bad(a, b, reason)
                return obj
            bad.append((self._byte(obj), why))
            search = obj + 1

    def _trailing(self, i: int) -> Iterator[tuple[Item, Span]]:
        i = self._skip_ws(i)
        if i < len(self.text):
            offset = self._byte(i)
            size = os.fstat(self.f.fileno()).st_size
            yield (SampleError(BAD_JSON, f"data after the closing ']' at byte {offset}", path=self.path),
                   Span(offset, size - offset, BAD_JSON))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["scan", "iter_json", "read_span", "sniff", "Span", "Layout", "CHUNK"]
