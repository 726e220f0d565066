"""decord backend. decord's own index-based seeking returns wrong frames on some
files (REFERENCE section 8: HEVC long GOP, real footage), so this backend reads in
presentation order from the start, skipping unneeded frames with ``skip_frames``,
and cross-checks decord's frame count against the probe."""
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

        width, height = size  # decord applies the display matrix itself: size is the upright size
        out: dict[int, np.ndarray] = {}
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height,
                                        num_threads=threads)
            if len(reader) != info.num_frames:
                raise SampleError(DECODE_ERROR, f"decord sees {len(reader)} frames, the container "
                                  f"index {info.num_frames}: refusing to guess which is which", path=path)
            pos = 0
            for target in positions:
                if target > pos:
                    reader.skip_frames(target - pos)
                frame = reader.next().asnumpy()
                out[target] = frame
                pos = target + 1
            del reader
        except SampleError:
            raise
        except (decord.DECORDError, RuntimeError, StopIteration) as exc:
            if not salvage:
                raise SampleError(DECODE_ERROR, f"decord failed: {exc}", path=path) from None
        return out
