"""Errors and the bad-sample policy.

Every problem with one record is a :class:`SampleError` carrying a short ``reason``
(the counter name) plus the key and path. The dataset catches it, counts it and
moves on, or re-raises it when the config says ``strict: true``.
"""
from __future__ import annotations

from typing import Optional


class MmstreamError(Exception):
    """Base class for errors mmstream raises on purpose."""


class ConfigError(MmstreamError):
    """The config is invalid; raised at start-up, never inside a worker."""


class SampleError(MmstreamError):
    """One record cannot be used. ``reason`` is the drop counter's name."""

    def __init__(self, reason: str, message: str = "", *, key: Optional[str] = None,
                 path: Optional[str] = None):
        self.reason = reason
        self.message = message
        self.key = key
        self.path = path
        self.source: Optional[str] = None  # the source name, filled in by the dataset
        super().__init__(self._text())

    def _text(self) -> str:
        parts = [self.reason]
        if self.key:
            parts.append(f"key={self.key}")
        if self.path:
            parts.append(f"path={self.path}")
        text = " ".join(parts)
        return f"{text}: {self.message}" if self.message else text

    def for_record(self, key: Optional[str]) -> "SampleError":
        """The same error for another record of a decode group (same reason, path, message)."""
        err = SampleError(self.reason, self.message, key=key, path=self.path)
        err.source = self.source
        return err

    def with_context(self, key: Optional[str] = None, path: Optional[str] = None) -> "SampleError":
        """Fill in the key/path where the raising code did not know them."""
        self.key = self.key or key
        self.path = self.path or path
        self.args = (self._text(),)
        return self


# Drop reasons, one name per rule (the counters in summaries and manifests).
BAD_JSON = "bad_json"
UNREADABLE_TAIL = "unreadable_tail"  # a JSON array that cannot be read from some byte to its end
BAD_RECORD = "bad_record"
MISSING_MEDIA = "missing_media"
NOT_A_FILE = "not_a_file"  # the media path exists but is not a regular file (a FIFO, a device)
PATH_OUTSIDE_ROOT = "path_outside_root"
DECODE_ERROR = "decode_error"
DECODE_TIMEOUT = "decode_timeout"  # planning or decoding one media item ran past sampling.decode_timeout
DECODER_CRASHED = "decoder_crashed"  # the decoder process died (a segfault, the OOM killer)
NO_FRAMES = "no_frames"
TOO_LARGE = "too_large"  # the media's header declares more pixels per picture than sampling.max_source_pixels
MEDIA_TAG_MISMATCH = "media_tag_mismatch"
