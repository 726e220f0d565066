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

**Limits** (:class:`Limits`, the source's ``max_record_mb`` and ``max_json_depth``): a
position whose text is longer than ``max_bytes``, or nested deeper than ``max_depth``,
is ``bad_json``. It is walked past without being held (a 2 GB line costs a chunk of
memory) and without recursion (:mod:`.jsonwalk`).

**Counting.** Every element of the file is one position, kept or dropped, and a damaged
element is one ``bad_json`` naming its byte offset, so that kept + dropped is the
number of elements the undamaged file had. What that means, exactly, for one damaged
element (a quote, a bracket, a comma removed or added, random bytes):

- JSONL: one position per non-blank line. A line that does not parse is ``bad_json``,
  except: a line holding several objects separated by whitespace (a newline lost) gives
  one position per object, and a line left open (inside a string or a bracket) followed
  by a line that does not parse either is one record cut by a newline put into it: one
  ``bad_json`` for both lines.
- JSON array: a malformed element is one ``bad_json``, and reading resynchronises at
  the next element: the first later ``,{"`` from which the elements that follow parse,
  each followed by ``,``, up to the closing ``]`` at the end of the file (or for
  ``max_bytes`` past the damaged element's start). An object nested inside the damaged
  element fails that test (its list closes before the file ends), so it is never taken
  for an element. Tolerated with a warning, taking no position: a missing ``,``, an
  extra ``,`` (an empty element), stray bytes between elements that hold no structure
  (a digit or a literal among them), a stray ``]`` that elements follow (``,`` or ``{``
  after it), a stray ``[`` whose array swallowed the rest of the file (its elements are
  read as elements). A ``]`` that other data follows is damage to the element before it.
- A file cut short (truncation): positions are the elements that begin before the cut;
  the cut one is ``unreadable_tail``.

Not exact, because the damaged text reads exactly like other damage: a ``}`` put
between two members of a record (``{"id": 3}, "video": ...}``) reads as a record whose
opening ``{`` was lost, so the record counts twice (its first members, then one
``bad_json``); damage to a record larger than ``max_bytes``; several damaged records
within ``max_bytes`` of each other may be counted as one ``bad_json`` each or as fewer.
Data after the array's closing ``]`` reads as damage to the last element (a record that
closed early): that element is the drop (``unreadable_tail`` when the file does not end
with a ``]``); more ``]`` or ``,`` there are ignored.

A missing or unreadable file, or one that is neither (it does not start with ``[`` or
``{``, and no line of its first MiB is a JSON object), raises
:class:`~mmstream.errors.ConfigError`: that is the config's problem, not one record's. An empty (or all-whitespace) file has no items.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Literal, Optional, Union

from ..config import MAX_DEPTH, MAX_RECORD_BYTES  # the defaults of a source's max_record_mb, max_json_depth
from ..errors import BAD_JSON, UNREADABLE_TAIL, ConfigError, SampleError
from .jsonwalk import Walker, codes, max_depth, opens_more_than

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
#: always escaped, so this cannot match in the text of a valid string.
_BOUNDARY = re.compile(r",[ \t\r\n]*\{[ \t\r\n]*[\"}]")
#: Bytes that make a stretch between elements more than stray bytes: structure.
_STRUCTURE = re.compile(r"[:{}\[\],]")
#: After the closing ']': anything but more closing brackets, commas and whitespace.
_TRAILING = re.compile(r"[^ \t\r\n\],]")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Limits:
    """What one position may hold: at most ``max_bytes`` of text, nested at most
    ``max_depth`` deep; beyond that it is ``bad_json``."""

    max_bytes: int = MAX_RECORD_BYTES
    max_depth: int = MAX_DEPTH


DEFAULT_LIMITS = Limits()


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
            if _later_line_is_a_record(f, offset):
                log.warning("%s: the first line is not a JSON object, later lines are: reading it as JSONL", path)
                return "jsonl", offset
            raise ConfigError(
                f"annotation file {path} is neither a JSON array nor JSONL: "
                f"it starts with {byte!r} at byte {offset}, expected '[' or '{{'")
        offset += len(chunk)


def _later_line_is_a_record(f: BinaryIO, offset: int) -> bool:
    """Whether one of the lines in the first MiB after ``offset`` is a JSON object (a
    JSONL file whose first line is damaged, not a file of another kind)."""
    f.seek(offset)
    head = f.read(1 << 20)
    lines = head.split(b"\n")[1:]  # the first line is the damaged one
    if len(head) == 1 << 20:
        lines = lines[:-1]  # the last one may be cut
    for line in lines:
        line = line.strip()
        if line.startswith(b"{"):
            try:
                if isinstance(json.loads(line), dict):
                    return True
            except (ValueError, RecursionError):
                continue
    return False


def sniff(path: str) -> Layout:
    """Open ``path`` and tell its layout: ``"array"``, ``"jsonl"`` or ``"empty"``.

    Raises :class:`ConfigError` when the file cannot be read or is neither layout.
    """
    with _open(path) as f:
        return _find_start(f, path)[0]


Item = Union[Any, SampleError]


def scan(path: str, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[Item, Span]]:
    """Yield ``(item, span)`` for each position of the file at ``path``: the parsed value
    (or a ``bad_json`` / ``unreadable_tail`` error, with ``path`` and no key) and where
    it lies."""
    with _open(path) as f:
        layout, offset = _find_start(f, path)
        try:
            if layout == "array":
                f.seek(offset + 1)  # past the byte-order mark and the '['
                yield from _ArrayScanner(f, path, offset + 1, limits).items()
            elif layout == "jsonl":
                f.seek(0)  # from the top, so that line numbers in messages are right
                yield from _scan_jsonl(f, path, limits)
        except OSError as exc:
            raise ConfigError(f"error reading annotation file {path}: {exc.strerror or exc}") from None


def iter_json(path: str, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[Item]:
    """The items of :func:`scan` without their spans."""
    for item, _ in scan(path, limits=limits):
        yield item


def read_span(f: BinaryIO, span: Span, path: str = "", *, limits: Limits = DEFAULT_LIMITS) -> Item:
    """The item at ``span`` of the open file ``f``, parsed again (what :func:`scan` gave).
    A bad span longer than ``limits.max_bytes`` is not read."""
    if span.status == UNREADABLE_TAIL:
        return SampleError(UNREADABLE_TAIL, f"unreadable from byte {span.offset} to the end of the file", path=path)
    if span.status == BAD_JSON and span.length > limits.max_bytes:
        return SampleError(BAD_JSON, f"at byte {span.offset}: {span.length} bytes or more, over the "
                                     f"{limits.max_bytes} bytes a record may have (max_record_mb)", path=path)
    data = os.pread(f.fileno(), span.length, span.offset)
    value, why = _parse(data, span.offset, limits)
    if span.status == BAD_JSON:
        return SampleError(BAD_JSON, f"at byte {span.offset}: {why or 'not followed by , or ]'}", path=path)
    if why is not None:  # the file changed since it was scanned
        return SampleError(BAD_JSON, f"at byte {span.offset}: {why} (has the file changed?)", path=path)
    return value


def _parse(data: bytes, offset: int, limits: Limits) -> tuple[Any, Optional[str]]:
    """One position's bytes (found at ``offset``) as ``(value, None)``, or ``(None, why)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 at byte {offset + exc.start}"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, f"nested deeper than max_json_depth {limits.max_depth}"
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at byte {offset + len(text[:exc.pos].encode('utf-8'))}"
    return (value, None) if (why := _depth_problem(text, 0, len(text), limits)) is None else (None, why)


def _depth_problem(text: str, i: int, j: int, limits: Limits) -> Optional[str]:
    if not opens_more_than(text, limits.max_depth, i, j):
        return None
    depth = max_depth(codes(text[i:j]))
    return f"nested {depth} deep, more than max_json_depth {limits.max_depth}" if depth > limits.max_depth else None


# -- JSONL ----------------------------------------------------------------------------

Line = tuple[int, int, Optional[bytes], int]  # line number, byte offset, body (None: too long), size


def _lines(f: BinaryIO, limit: int) -> Iterator[Line]:
    """The file's lines without their line ends; a line longer than ``limit`` bytes is
    read past (a chunk at a time, nothing kept) and has no body."""
    offset = 0
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        start = offset
        offset += len(raw)
        if len(raw) > limit and not raw.endswith(b"\n"):
            while True:  # to the next line end, a chunk at a time
                data = f.read(CHUNK)
                end = data.find(b"\n")
                offset += len(data) if end < 0 else end + 1
                if end >= 0 or not data:
                    break
            f.seek(offset)
            yield lineno, start, None, offset - start
            continue
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
            start += len(_BOM)
        body = raw.rstrip(b"\r\n")
        yield lineno, start, body, len(body)


def _scan_jsonl(f: BinaryIO, path: str, limits: Limits) -> Iterator[tuple[Item, Span]]:
    def bad(lineno: int, start: int, size: int, why: str) -> tuple[SampleError, Span]:
        log.warning("%s: line %d (byte %d) is not valid JSON: %s", path, lineno, start, why)
        return (SampleError(BAD_JSON, f"line {lineno} at byte {start}: {why}", path=path),
                Span(start, size, BAD_JSON))

    lines = _lines(f, limits.max_bytes)
    ahead: Optional[Line] = None
    while True:
        line = ahead if ahead is not None else next(lines, None)
        ahead = None
        if line is None:
            return
        lineno, start, body, size = line
        if body is None:
            yield bad(lineno, start, size, f"{size} bytes, over the {limits.max_bytes} bytes a record may "
                                           f"have (max_record_mb)")
            continue
        if not body.strip():
            continue
        value, why = _parse(body, start, limits)
        if why is None:
            yield value, Span(start, size)
            continue
        several = _values_on_line(body, start, path, limits)
        if several:
            log.warning("%s: line %d holds %d records (a line end is missing)", path, lineno, len(several))
            yield from several
            continue
        if _ends_open(body):  # perhaps a record cut in two by a line end put into it
            ahead = next(lines, None)
            if ahead is not None and ahead[2] is not None and ahead[2].strip() \
                    and _parse(ahead[2], ahead[1], limits)[1] is not None \
                    and not _values_on_line(ahead[2], ahead[1], path, limits):
                _, start2, _, size2 = ahead
                ahead = None
                yield bad(lineno, start, start2 + size2 - start, f"{why} (a record over lines {lineno}-{lineno + 1})")
                continue
        yield bad(lineno, start, size, why)


def _values_on_line(body: bytes, start: int, path: str, limits: Limits) -> list[tuple[Item, Span]]:
    """Two or more objects, nothing but whitespace between them, each with its span; else []."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return []
    out: list[tuple[Item, Span]] = []
    i, n = 0, len(text)
    while i < n:
        try:
            value, j = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):
            return []
        if not isinstance(value, dict):  # records are objects: '{...}2' is one damaged record
            return []
        a = start + len(text[:i].encode("utf-8"))
        b = a + len(text[i:j].encode("utf-8"))
        why = _depth_problem(text, i, j, limits)
        out.append((value, Span(a, b - a)) if why is None else
                   (SampleError(BAD_JSON, f"at byte {a}: {why}", path=path), Span(a, b - a, BAD_JSON)))
        i = j
        while i < n and text[i] in _WS_CHARS:
            i += 1
    return out if len(out) > 1 else []


def _ends_open(body: bytes) -> bool:
    """Whether a line ends inside a string or a bracket (its record goes on)."""
    w = Walker()
    w.feed(body)
    return w.in_string or w.depth > 0


# -- JSON array -----------------------------------------------------------------------

class _Broken(Exception):
    """The element does not parse: ``pos`` is the index where parsing failed."""

    def __init__(self, pos: int, why: str, at_end: bool):
        super().__init__(why)
        self.pos = pos
        self.why = why
        self.at_end = at_end  # it runs to the end of the file (a file cut short)


class _TooLong(Exception):
    """The element is longer than the record limit."""


class _TooDeep(Exception):
    """The element nests deeper than the parser recurses."""


class _ArrayScanner:
    """Elements of a JSON array from a file positioned just after its ``[``.

    ``text`` holds the file's text from byte ``start`` on (decoded with
    ``surrogateescape``, so every byte maps back); text before the element being
    parsed is dropped as reading goes on, so memory stays at about two chunks plus
    the largest element (at most ``limits.max_bytes``; while resynchronising, that
    much past the damaged element).
    """

    def __init__(self, f: BinaryIO, path: str, start: int, limits: Limits):
        self.f = f
        self.path = path
        self.limits = limits
        self._reset(start)

    # -- buffer --------------------------------------------------------------------
    def _reset(self, offset: int) -> None:
        """Read on from byte ``offset`` with nothing in hand."""
        self.f.seek(offset)
        self.text = ""
        self.start = offset  # byte offset of text[0]
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._ascii = True  # text[0:] is ASCII: characters are bytes
        self._mark = (0, offset)  # (character index, byte offset) known to correspond

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

    def _ahead(self, i: int, want: int = CHUNK) -> None:
        """Make sure ``want`` characters after ``i`` are in hand (or the end of the file)."""
        while not self.eof and len(self.text) - i < want:
            self._more()

    def _byte(self, i: int) -> int:
        """Byte offset of character ``i`` (fastest at or after the last one asked for)."""
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

    def _content_end(self) -> int:
        """Index just past the last non-whitespace character in hand."""
        n = len(self.text)
        while n and self.text[n - 1] in _WS_CHARS:
            n -= 1
        return n

    def _skip_ws(self, i: int) -> int:
        while True:
            n = len(self.text)
            while i < n and self.text[i] in _WS_CHARS:
                i += 1
            if i < n or not self._more():
                return i

    # -- one element ---------------------------------------------------------------
    def _decode(self, i: int) -> tuple[Any, int]:
        """``raw_decode`` at ``i``, reading on while the element is merely cut by the
        end of the text in hand (reading twice as far each time, up to the limit).
        Raises _Broken, _TooLong or _TooDeep."""
        want = CHUNK
        while True:
            self._ahead(i, want)
            try:
                return _DECODER.raw_decode(self.text, i)
            except RecursionError:
                raise _TooDeep() from None
            except json.JSONDecodeError as exc:
                cut = exc.pos >= self._content_end() or exc.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    raise _Broken(exc.pos, f"{exc.msg} at byte {self._byte(exc.pos)}", cut) from None
                if len(self.text) - i > self.limits.max_bytes:
                    raise _TooLong() from None
                want = min(2 * (len(self.text) - i), self.limits.max_bytes + 1)

    def _span(self, i: int, j: int) -> Span:
        a = self._byte(i)
        return Span(a, self._byte(j) - a)

    def _checked(self, value: Any, i: int, j: int) -> tuple[Item, Span]:
        span = self._span(i, j)
        why = None
        if not self._ascii:
            try:
                self.text[i:j].encode("utf-8")
            except UnicodeEncodeError:
                why = "not valid UTF-8"
        why = why or _depth_problem(self.text, i, j, self.limits)
        if why:
            return self._bad(span.offset, span.offset + span.length, why)
        return value, span

    def _bad(self, a: int, b: int, why: str) -> tuple[SampleError, Span]:
        log.warning("%s: array element at byte %d is not valid JSON (%s); reading on at the next element",
                    self.path, a, why)
        return (SampleError(BAD_JSON, f"array element at byte {a}: {why}", path=self.path),
                Span(a, b - a, BAD_JSON))

    # -- the array -----------------------------------------------------------------
    def items(self) -> Iterator[tuple[Item, Span]]:
        i: Optional[int] = 0
        while i is not None:
            i = self._forget(self._skip_ws(i))
            if i >= len(self.text):
                log.warning("%s: the JSON array is not closed (the file ends after an element)", self.path)
                return
            ch = self.text[i]
            if ch == "]":
                i = yield from self._close(i)
                continue
            if ch == ",":
                log.warning("%s: an empty array element (an extra ',') at byte %d", self.path, self._byte(i))
                i += 1
                continue
            try:
                value, j = self._decode(i)
            except _Broken as exc:
                if exc.at_end:  # it runs to the end of the file: no element can follow it
                    yield from self._tail(self._byte(i), exc.why)
                    return
                i = yield from self._resync(i, exc.pos, exc.why)
                continue
            except _TooLong:
                i = yield from self._walk_past(i, f"over the {self.limits.max_bytes} bytes a record may have "
                                                  f"(max_record_mb)")
                continue
            except _TooDeep:
                i = yield from self._walk_past(i, f"nested deeper than max_json_depth {self.limits.max_depth}")
                continue
            n = self._skip_ws(j)
            if n >= len(self.text):
                if ch == "[" and _is_records(value):
                    log.warning("%s: a stray '[' at byte %d (its array runs to the end of the file); reading "
                                "its elements as elements", self.path, self._byte(i))
                    i += 1
                    continue
                yield self._checked(value, i, j)
                log.warning("%s: the JSON array is not closed (the file ends after an element)", self.path)
                return
            follower = self.text[n]
            if follower == "]" and not self._ends_here(n):  # a ']' with more of the array after it
                i = yield from self._resync(i, n, f"a ']' inside the array at byte {self._byte(n)}")
                continue
            if follower in "{[" and not isinstance(value, (dict, list, str)):
                log.warning("%s: stray bytes between array elements at byte %d", self.path, self._byte(i))
                i = n  # a digit or a literal before the next element: no element of its own
                continue
            if follower in ",]{[":
                if follower in "{[":  # a missing ',': nothing is lost
                    log.warning("%s: missing ',' between array elements at byte %d", self.path, self._byte(j))
                yield self._checked(value, i, j)
                i = n + 1 if follower == "," else n
                continue
            stray = _STRUCTURE.search(self.text, n)
            while stray is None and len(self.text) - n <= self.limits.max_bytes:
                seen = len(self.text)
                if not self._more():
                    break
                stray = _STRUCTURE.search(self.text, seen)  # only the new text (one-character matches)
            if (stray is None and self.eof) or (stray is not None and self.text[stray.start()] in ",]{"):  # stray bytes, then the next element or the end
                log.warning("%s: stray bytes between array elements at byte %d", self.path, self._byte(n))
                yield self._checked(value, i, j)  # then the next element (a ',', or a '{' with no ','), or the end
                i = stray.start() + (self.text[stray.start()] == ",") if stray else len(self.text)
                continue
            i = yield from self._resync(i, n, f"unexpected {follower!r} after the element at byte {self._byte(j)}")

    def _ends_here(self, i: int) -> bool:
        """Whether the ``]`` at ``i`` ends the array: nothing follows it but whitespace
        (and extra ``]`` or ``,``), or elements do (``,`` or ``{``: a stray ``]``)."""
        k = self._skip_ws(i + 1)
        if k >= len(self.text) or self.text[k] in ",{":
            return True
        while _TRAILING.search(self.text, k) is None:
            k = len(self.text)
            if not self._more():
                return True
        return False

    def _close(self, i: int) -> Iterator[tuple[Item, Span]]:
        """At a ``]``: the end, or a stray ``]`` that elements follow. Returns the index to
        read on from, or None at the end. A ``]`` that other data follows is damage:
        counted as one ``bad_json`` up to the next element (or the end)."""
        if not self._ends_here(i):
            return (yield from self._resync(i, i, f"a ']' inside the array at byte {self._byte(i)}"))
        k = self._skip_ws(i + 1)
        if k < len(self.text) and self.text[k] in ",{":
            log.warning("%s: a stray ']' at byte %d (elements follow it)", self.path, self._byte(i))
            return k + 1 if self.text[k] == "," else k
        if k < len(self.text):
            log.warning("%s: extra ']' or ',' after the closing ']' at byte %d", self.path, self._byte(i))
        return None

    def _walk_past(self, i: int, why: str) -> Iterator[tuple[Item, Span]]:
        """An element too long or too deep to parse: walk its structure on disk (nothing
        held, no recursion) to the ``,`` or ``]`` after it, and count it ``bad_json``."""
        a = self._byte(i)
        walker, pos, end = Walker(), a, None
        while end is None:
            data = os.pread(self.f.fileno(), CHUNK, pos)
            if not data:
                break
            stop = walker.feed(data, stop=True)
            if stop is not None:
                end = pos + stop
            else:
                pos += len(data)
        if end is None:
            if self.text[i] == "[" and walker.depth == 0 and not walker.in_string:
                log.warning("%s: a stray '[' at byte %d (its array runs to the end of the file); reading its "
                            "elements as elements", self.path, a)
                self._reset(a + 1)
                return 0
            return (yield from self._resync(i, None, why))
        follower = os.pread(self.f.fileno(), 1, end)
        if follower not in (b",", b"]"):  # the element is damaged as well: look for the next one
            return (yield from self._resync(i, None, why))
        yield self._bad(a, end, f"{why} ({end - a} bytes, nested {walker.deepest} deep)")
        self._reset(end + 1 if follower == b"," else end)
        return 0

    # -- resynchronising -----------------------------------------------------------
    def _resync(self, i: int, err: Optional[int], why: str) -> Iterator[tuple[Item, Span]]:
        """From a damaged element at ``i`` (parsing failed at ``err``): count it as one
        ``bad_json`` up to the next element (:meth:`_next_start`), and return that
        element's index; at the end of the file, count it ``bad_json`` if the array is
        closed, else ``unreadable_tail``, and return None."""
        a = self._byte(i)
        e = self._byte(err) if err is not None else None
        found = self._next_start(i + 1, a, e)
        if found is not None:
            comma, nxt = found
            yield self._bad(a, self._byte(comma), why)
            return nxt
        yield from self._tail(a, why)
        return None

    def _tail(self, a: int, why: str) -> Iterator[tuple[Item, Span]]:
        """The damaged element at byte ``a`` runs to the end of the file: ``bad_json`` when
        the array is closed, else ``unreadable_tail``."""
        while self._more():
            self._forget(len(self.text))
        closed = self.text.rstrip(_WS_CHARS)
        if closed.endswith("]"):  # the array is closed: its last element is bad, not a lost tail
            yield self._bad(a, self._byte(len(closed) - 1), why)
            return None
        log.warning("%s: cannot read the JSON array from byte %d on (%s); counted as %s",
                    self.path, a, why, UNREADABLE_TAIL)
        yield (SampleError(UNREADABLE_TAIL, f"unreadable from byte {a} to the end of the file ({why})",
                           path=self.path), Span(a, -1, UNREADABLE_TAIL))

    def _next_start(self, search: int, base: int, err: Optional[int]) -> Optional[tuple[int, int]]:
        """The ``(comma, element)`` indices of the first boundary after ``search`` whose
        chain of elements holds (:meth:`_chain`), or None when none does up to the end.
        ``base``, ``err``: byte offsets of the damaged element and of where it failed."""
        refuted: set[int] = set()  # byte offsets of elements of chains that did not hold
        while True:
            search = self._forget(search)
            m = _BOUNDARY.search(self.text, search)
            if m is None:
                search = self._open_boundary(search)
                if not self._more():
                    return None
                continue
            c = self.text.index("{", m.start())
            search = c + 1
            if self._byte(c) in refuted:
                continue
            holds, starts = self._chain(c, base, err)
            if holds:
                return m.start(), c
            refuted.update(starts)

    def _open_boundary(self, search: int) -> int:
        """Where a boundary cut by the end of the text in hand starts (its ``,``, followed
        by nothing but whitespace and perhaps a ``{``), or the end of the text."""
        k = self._content_end()
        if k > search and self.text[k - 1] == "{":
            k -= 1
            while k > search and self.text[k - 1] in _WS_CHARS:
                k -= 1
        return k - 1 if k > search and self.text[k - 1] == "," else len(self.text)

    def _chain(self, c: int, base: int, err: Optional[int]) -> tuple[bool, list[int]]:
        """Whether the elements from ``c`` on are the array's: each parses and is followed
        by ``,``, up to the ``]`` that ends the file, or until ``max_bytes`` past
        ``base`` (an object nested in the damaged element is inside it, which is no
        longer). Past the point ``err`` where the damaged element failed, the text is
        undamaged (parsing fails at or after the damage), so a chain from there that meets
        an element that does not parse, its first included, has met another damaged
        element: it holds too (damaged elements side by side count one each). Returns
        the byte offsets of the chain's elements (they need not be tried again)."""
        starts: list[int] = []
        after_damage = err is not None and self._byte(c) >= err
        k = c
        while True:
            kb = self._byte(k)
            try:
                _, j = self._decode(k)
            except _TooLong:
                return True, starts
            except _TooDeep:
                end = self._value_end(k)
                if end is None:
                    return after_damage, starts
                j = end
            except _Broken:
                return after_damage, starts
            starts.append(kb)
            if self._byte(j) - base >= self.limits.max_bytes:
                return True, starts
            n = self._skip_ws(j)
            if n < len(self.text) and self.text[n] == ",":
                n = self._skip_ws(n + 1)
                if n < len(self.text) and self.text[n] != "]":
                    k = n
                    continue
            if n >= len(self.text):  # the file ends with no ']'
                return after_damage, starts
            if self.text[n] == "]":
                return self._skip_ws(n + 1) >= len(self.text), starts
            return False, starts

    def _value_end(self, k: int) -> Optional[int]:
        """Index of the ``,`` or ``]`` after the value at ``k``, walked in the text in
        hand (reading on up to the record limit); None when there is none."""
        walker, pos = Walker(), k
        while True:
            stop = walker.feed(codes(self.text[pos:]), stop=True)
            if stop is not None:
                return pos + stop
            pos = len(self.text)
            if self._byte(pos) - self._byte(k) > self.limits.max_bytes or not self._more():
                return None


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


__all__ = ["scan", "iter_json", "read_span", "sniff", "Span", "Layout", "Limits", "DEFAULT_LIMITS", "CHUNK",
           "MAX_RECORD_BYTES", "MAX_DEPTH"]
