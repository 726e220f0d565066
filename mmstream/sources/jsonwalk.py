"""JSON structure without parsing: which bytes lie inside strings, and how deep the
brackets nest, over bytes fed a piece at a time (nothing kept between pieces).

    w = Walker()
    end = w.feed(piece, stop=True)   # index of the ',' or the extra ']' that ends a value, or None
    w.deepest                        # deepest nesting seen so far

The annotation scanner uses it where parsing is not an option: to find where an
element larger than the record limit ends (a 2 GB line) without holding it, and to
measure the nesting depth of an element without recursion. Each piece is walked with
a few numpy passes (no Python loop per byte), so a 256 KiB piece costs about a
millisecond whatever it holds.

A ``"`` is escaped when an odd run of backslashes precedes it (runs carry over piece
boundaries). Bytes outside JSON's structure (a backslash outside a string) are taken
as they come: on damaged text the walk is a best effort, never an error.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

_QUOTE, _BACKSLASH, _COMMA = 0x22, 0x5C, 0x2C
_OPEN = (0x5B, 0x7B)  # [ {
_CLOSE = (0x5D, 0x7D)  # ] }


class Walker:
    """See the module docstring. Depth 0 is where the walk starts (before a value)."""

    __slots__ = ("in_string", "backslashes", "depth", "deepest")

    def __init__(self) -> None:
        self.in_string = False
        self.backslashes = 0  # length of the backslash run that ended the previous piece
        self.depth = 0
        self.deepest = 0

    def feed(self, data: Union[bytes, np.ndarray], stop: bool = False) -> Optional[int]:
        """Walk ``data`` (bytes, or the code points of a text: :func:`codes`). With
        ``stop``, return the index of the first byte that ends a value begun at depth 0:
        a ``,`` at depth 0 or a closing bracket that takes the depth below 0 (outside
        strings); the state is then left as it was before that byte. Otherwise (or when
        no such byte comes) return None."""
        a = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        n = len(a)
        if n == 0:
            return None
        quotes = np.flatnonzero(a == _QUOTE)
        if quotes.size:
            quotes = self._unescaped(a, quotes)
        s0 = 1 if self.in_string else 0
        kinds = (a == _OPEN[0]) | (a == _OPEN[1]) | (a == _CLOSE[0]) | (a == _CLOSE[1])
        if stop:
            kinds |= a == _COMMA
        marks = np.flatnonzero(kinds)
        if marks.size:
            outside = ((np.searchsorted(quotes, marks) + s0) & 1) == 0
            marks = marks[outside]
        if marks.size:
            ch = a[marks]
            delta = np.where((ch == _OPEN[0]) | (ch == _OPEN[1]), 1, np.where(ch == _COMMA, 0, -1))
            depth = self.depth + np.cumsum(delta, dtype=np.int64)
            if stop:
                hit = ((ch == _COMMA) & (depth == 0)) | (depth < 0)
                if hit.any():
                    first = int(np.argmax(hit))
                    if first:
                        self.deepest = max(self.deepest, int(depth[:first].max()))
                    return int(marks[first])
            self.deepest = max(self.deepest, int(depth.max()))
            self.depth = int(depth[-1])
        self.in_string = bool((s0 + quotes.size) & 1)
        if a[-1] != _BACKSLASH:
            self.backslashes = 0
        else:
            plain = np.flatnonzero(a != _BACKSLASH)
            self.backslashes = n - 1 - int(plain[-1]) if plain.size else self.backslashes + n
        return None

    def _unescaped(self, a: np.ndarray, quotes: np.ndarray) -> np.ndarray:
        """The quotes not escaped: those after an even run of backslashes. Only a quote
        right after a backslash needs its run counted (rare in text)."""
        after = quotes[quotes > 0]
        suspects = after[a[after - 1] == _BACKSLASH]
        if quotes[0] == 0 and self.backslashes:
            suspects = np.concatenate([[0], suspects])
        if not suspects.size:
            return quotes
        # count each suspect's run backwards, all suspects at once, one byte per step
        run = np.zeros(len(suspects), np.int64)
        k = suspects - 1
        going = k >= 0
        while going.any():
            more = going & (a[np.maximum(k, 0)] == _BACKSLASH)
            run += more
            k -= more
            going = more & (k >= 0)
        run += np.where(k < 0, self.backslashes, 0)  # runs from the start of the piece go on before it
        escaped = suspects[(run & 1) == 1]
        return np.setdiff1d(quotes, escaped, assume_unique=True) if escaped.size else quotes


def codes(text: str) -> np.ndarray:
    """The code points of ``text`` as an array :meth:`Walker.feed` takes, so that the
    indices it returns are character indices (lone surrogates, from undecodable bytes,
    included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def max_depth(data: Union[bytes, np.ndarray]) -> int:
    """How deep the brackets of ``data`` (one JSON value) nest: 0 for a scalar, 1 for
    ``[1, 2]``, 2 for ``{"a": [1]}``."""
    w = Walker()
    w.feed(data)
    return w.deepest


def opens_more_than(text: str, limit: int, start: int = 0, end: Optional[int] = None) -> bool:
    """Whether ``text[start:end]`` holds more than ``limit`` opening brackets: its depth
    cannot pass ``limit`` otherwise, so most values need no walk."""
    end = len(text) if end is None else end
    return text.count("{", start, end) + text.count("[", start, end) > limit


__all__ = ["Walker", "codes", "max_depth", "opens_more_than"]
