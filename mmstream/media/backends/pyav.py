"""PyAV backend: decodes each needed frame's dependency chain once.

For each target frame it decides, from the key-frame list the probe read, whether to
keep decoding forward or to jump to the key frame before the target: it seeks only
when a key frame lies between the last decoded frame and the target, so it never
seeks backwards and never decodes a frame twice. Only the frames that are kept are
scaled (swscale, inside FFmpeg) and converted to RGB.
"""
from __future__ import annotations

import logging
from bisect import bisect_right
from typing import Sequence

import av
import numpy as np

from ...errors import DECODE_ERROR, SampleError
from ..probe import VideoInfo, apply_rotation
from .base import Backend

log = logging.getLogger(__name__)


def seek_plan(info: VideoInfo, positions: Sequence[int]) -> list[tuple[bool, list[int]]]:
    """Group sorted target positions into runs ``(seek_first, [positions])``.

    A run starts with a seek to the key frame before its first target when that key
    frame lies after the previous run's last target (decoding forward would otherwise
    pass through frames nobody needs).
    """
    runs: list[tuple[bool, list[int]]] = []
    last_pts = None
    for pos in positions:
        pts = info.pts[pos]
        key = info.keyframes[max(bisect_right(info.keyframes, pts) - 1, 0)]
        if last_pts is None:
            runs.append((key > info.pts[0], [pos]))
        elif key > last_pts:
            runs.append((True, [pos]))
        else:
            runs[-1][1].append(pos)
        last_pts = pts
    return runs


class PyAVBackend(Backend):
    name = "pyav"

    def read(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
             threads: int = 1, salvage: bool = False) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        try:
            with av.open(path, metadata_errors="ignore") as container:
                stream = container.streams.video[0]
                if threads != 1:
                    stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
                for seek, run in seek_plan(info, positions):
                    if seek:
                        container.seek(info.pts[run[0]], stream=stream, backward=True, any_frame=False)
                    if not self._decode_run(container, stream, info, run, size, out):
                        # the seek landed after the target (broken index): read this run from the start
                        container.seek(info.pts[0], stream=stream, backward=True, any_frame=False)
                        self._decode_run(container, stream, info, run, size, out, strict_start=False)
        except av.FFmpegError as exc:
            if not salvage:
                raise SampleError(DECODE_ERROR, f"decoding failed: {exc}", path=path) from None
            log.info("salvaged %d frames of %s before: %s", len(out), path, exc)
        missing = [p for p in positions if p not in out]
        if missing and not salvage:
            raise SampleError(DECODE_ERROR, f"{len(missing)} of {len(positions)} frames not decodable "
                              f"(first missing pts {info.pts[missing[0]]})", path=path)
        return out

    @staticmethod
    def _decode_run(container, stream, info, run, size, out, strict_start=True) -> bool:
        """Decode forward until every target of ``run`` is in ``out``.

        Returns False when the first decoded frame is already past the first target
        (only possible right after a seek)."""
        wanted = {info.pts[p]: p for p in run}
        last = info.pts[run[-1]]
        width, height = size
        if info.rotation in (90, 270):
            width, height = height, width  # scale before rotating
        first = True
        for packet in container.demux(stream):
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                if first and strict_start and frame.pts > info.pts[run[0]]:
                    return False
                first = False
                pos = wanted.pop(frame.pts, None)
                if pos is not None:
                    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                    out[pos] = apply_rotation(rgb, info.rotation)
                if frame.pts >= last or not wanted:
                    return True
        return True
