"""The source pixel limit (``sampling.max_source_pixels``): media whose header declares
more pixels per picture are ``too_large``, refused before any frame buffer is allocated.

    check_pixels(width, height, limit, path)           # SampleError(too_large) over the limit
    with ffmpeg_bound(limit) as bound:                 # FFmpeg refuses bigger pictures itself
        container = av.open(source, options=bound.options)
        ...
    bound.declared()                                   # (w, h) FFmpeg refused, from its log

Images and frames are checked from their header (PIL reads only the header at open).
Videos cannot be checked from the container alone: FFmpeg decodes a picture while it
opens a file (``avformat_find_stream_info``), sized by what the bitstream (an H.264
SPS) declares, not the container. So every FFmpeg decoder mmstream opens gets the
limit as its ``max_pixels`` option: FFmpeg then refuses such a picture before it
allocates it, and logs the size it refused, which names the reason. (FFmpeg's own
bound, about 268 M pixels, refuses 65535 x 65535 whatever the option; that too is
``too_large`` here.)
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import TOO_LARGE, SampleError

#: FFmpeg's messages when it refuses a picture size (libavutil/imgutils.c).
_REFUSED = re.compile(r"Picture size (\d+)x(\d+) (?:is invalid|exceeds specified max pixel count)")


def check_pixels(width: int, height: int, limit: Optional[int], path: Optional[str], what: str = "picture") -> None:
    """Raise ``too_large`` when ``width x height`` is over ``limit`` (None: no limit)."""
    if limit is not None and width * height > limit:
        raise SampleError(TOO_LARGE, f"{what} of {width}x{height} = {width * height} pixels declared, over "
                                     f"sampling.max_source_pixels {limit}", path=path)


class FFmpegBound:
    """What :func:`ffmpeg_bound` gives: the options to open with, and the log."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.options = {"max_pixels": str(limit)} if limit is not None else {}
        self.logs: list = []

    def declared(self) -> Optional[tuple[int, int]]:
        """The largest picture size FFmpeg refused while this bound was open, if any."""
        sizes = [(int(m[1]), int(m[2])) for _, _, text in self.logs if (m := _REFUSED.search(text))]
        sizes = [s for s in sizes if s[0] * s[1] > 0]
        return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None

    def check(self, path: Optional[str]) -> None:
        """``too_large`` if FFmpeg refused a picture over the limit (or over its own bound)."""
        size = self.declared()
        if size is not None:
            raise SampleError(TOO_LARGE, f"picture of {size[0]}x{size[1]} = {size[0] * size[1]} pixels declared "
                                         f"in the stream, refused before decoding (sampling.max_source_pixels "
                                         f"{self.limit})", path=path)


@contextmanager
def ffmpeg_bound(limit: Optional[int]) -> Iterator[FFmpegBound]:
    """FFmpeg's error log of this thread, captured while the block runs (the level is
    put back after it): where FFmpeg says which picture size it refused."""
    import av.logging

    bound = FFmpegBound(limit)
    level = av.logging.get_level()
    if level is None or level < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=True) as logs:
            bound.logs = logs  # filled as FFmpeg logs, still readable after the block
            yield bound
    finally:
        av.logging.set_level(level)


__all__ = ["check_pixels", "ffmpeg_bound", "FFmpegBound"]
