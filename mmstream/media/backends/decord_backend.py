"""decord backend. decord's index-based seeking returns wrong frames on some files
(REFERENCE section 8: HEVC long GOP, real footage), and so does ``skip_frames``:
on a long-GOP HEVC clip, skipping 262 frames lands on frame 266 (tests/test_media.py
catches it). Only ``next()`` was right every time, so this backend reads every frame
in presentation order up to the last target with ``next()`` (decord converts each to
RGB; PyAV, the default, does not), and cross-checks decord's frame count against
the probe."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import DECODE_ERROR, SampleError
from ..probe import VideoInfo
from .base import Backend


class DecordBackend(Backend):
    name = "decord"

    def read(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
             threads: int = 1, salvage: bool = False) -> dict[int, np.ndarray]:
        import decord

        from ... import storage

        if storage.is_url(path):  # decord opens paths only: a URL goes through the local copy cache
            with storage.open_media(path) as source:
                if not isinstance(source, str):
                    raise SampleError(DECODE_ERROR, "decord reads URLs only through sampling.storage.cache_dir "
                                                    "(or use the pyav or torchcodec decoder)", path=path)
                return self.read(source, info, positions, size, threads, salvage)
        width, height = size  # decord applies the display matrix itself: size is the upright size
        out: dict[int, np.ndarray] = {}
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height,
                                        num_threads=threads)
            if len(reader) != info.num_frames:
                raise SampleError(DECODE_ERROR, f"decord sees {len(reader)} frames, the container "
                                  f"index {info.num_frames}: refusing to guess which is which", path=path)
            wanted = set(positions)
            for pos in range(max(positions) + 1):
                frame = reader.next()
                if pos in wanted:
                    out[pos] = frame.asnumpy()
            del reader
        except SampleError:
            raise
        except (decord.DECORDError, RuntimeError, StopIteration) as exc:
            if not salvage:
                raise SampleError(DECODE_ERROR, f"decord failed: {exc}", path=path) from None
        return out
