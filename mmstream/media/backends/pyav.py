"""PyAV backend: decodes each needed frame's dependency chain once, and nothing more.

Three rules, each measured in ``benchmarks/`` (see the README's benchmark table):

* **Seek plan.** For each target frame it decides, from the key-frame list the probe
  read, whether to keep decoding forward or to jump to the key frame before the
  target: it seeks only when that key frame lies more than ``min_gap`` frames past
  the last target, so it never seeks backwards, and never back into frames the
  decoder has already read ahead (B-frame reordering and frame threads hold a few);
  dense targets become one forward pass, sparse ones (T2Vid's 24 frames of a long
  video) one short run per key-frame interval.
* **Non-reference frames that are not targets are not decoded.** In H.264 a frame
  with ``nal_ref_idc == 0`` (and in HEVC a sub-layer non-reference picture of a
  stream without temporal sub-layers) is never used to predict another frame, so
  the decoder is told to skip it (``skip_frame = NONREF``) unless it is a target.
  The decoder's output for every other frame is bit-identical (tests compare
  against a plain decode). With x264's default B-pyramid that is about 40% of the
  frames.
* **Only kept frames are scaled and converted**, in one swscale call (resize and
  YUV->RGB together), directly to the output size.

``PyAVBackend(seek=False, skip_nonref=False)`` is the plain sequential reader the
tests compare against.
"""
from __future__ import annotations

import logging
from bisect import bisect_right
from typing import Optional, Sequence

import av
import numpy as np

from ... import timing
from ...errors import DECODE_ERROR, SampleError
from ..probe import VideoInfo, apply_rotation
from .base import Backend

log = logging.getLogger(__name__)

Run = tuple[Optional[int], list[int]]

#: Seek only when it skips more than this many frames. A decoder reads ahead of the
#: frame it returns (B-frame reordering: 1-4 frames; frame threads: one per thread),
#: so seeking to a key frame a few frames ahead would decode those frames twice.
MIN_SEEK_GAP = 16


def key_before(info: VideoInfo, pts: int) -> int:
    """pts of the last key frame at or before ``pts`` (the first key frame if none)."""
    return info.keyframes[max(bisect_right(info.keyframes, pts) - 1, 0)]


def seek_plan(info: VideoInfo, positions: Sequence[int], seek: bool = True,
              min_gap: int = MIN_SEEK_GAP) -> list[Run]:
    """Group sorted target positions into runs ``(seek_to, [positions])``.

    ``seek_to`` is the pts of the key frame to jump to before decoding the run, or
    None to keep decoding forward. A run starts with a seek when the key frame before
    its first target lies more than ``min_gap`` frames after the previous target
    (decoding forward would pass through that many frames nobody needs); the first
    run seeks when its key frame is more than ``min_gap`` frames into the stream.
    ``seek=False`` gives a single forward run.
    """
    runs: list[Run] = []
    last = -1  # position of the previous target (-1: before the first frame)
    for pos in positions:
        key = key_before(info, info.pts[pos])
        key_pos = bisect_right(info.pts, key) - 1
        if seek and key_pos - last > min_gap:
            runs.append((key, [pos]))
        elif not runs:
            runs.append((None, [pos]))
        else:
            runs[-1][1].append(pos)
        last = pos
    return runs


def can_skip_nonref(info: VideoInfo) -> bool:
    """Whether the decoder's NONREF discard leaves every other frame untouched.

    H.264: a frame with nal_ref_idc 0 is never a reference. HEVC: FFmpeg discards
    every sub-layer non-reference picture, which higher temporal sub-layers may still
    use, so only streams with a single temporal sub-layer qualify.
    """
    if info.codec == "h264":
        return True
    return info.codec == "hevc" and info.temporal_layers == 1


def picture_bound(info: VideoInfo) -> int:
    """FFmpeg's ``max_pixels`` for decoding a probed stream: the probed size with room for
    the decoder's alignment padding, so that a picture larger than the probe saw (a stream
    that changes its size midway) is refused before it is allocated."""
    return (info.width + 256) * (info.height + 256)


def decoder_threads(threads: int) -> tuple[int, Optional[str]]:
    """(FFmpeg thread_count, thread_type) for a thread count (callers resolve 0 = auto first)."""
    if threads <= 1:
        return 1, None
    return threads, "AUTO"  # frame + slice threads


class PyAVBackend(Backend):
    name = "pyav"

    def __init__(self, seek: bool = True, skip_nonref: bool = True):
        self.seek = seek
        self.skip_nonref = skip_nonref

    def read(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
             threads: int = 1, salvage: bool = False) -> dict[int, np.ndarray]:
        from ... import storage

        out: dict[int, np.ndarray] = {}
        bound = {"max_pixels": str(picture_bound(info))}
        try:
            with storage.open_media(path) as source, \
                    av.open(source, metadata_errors="ignore", options=bound) as container:
                stream = container.streams.video[0]
                stream.codec_context.options = dict(bound)
                count, kind = decoder_threads(threads)
                if kind:
                    stream.thread_type = kind
                stream.codec_context.thread_count = count
                skip = _Skipper(stream.codec_context, {info.pts[p] for p in positions}) \
                    if self.skip_nonref and can_skip_nonref(info) else None
                gap = MIN_SEEK_GAP + count - 1
                for key, run in seek_plan(info, positions, self.seek, gap):
                    if key is not None:
                        container.seek(key, stream=stream, backward=True, any_frame=False)
                    if not self._decode_run(container, stream, info, run, size, out, skip):
                        # the seek landed after the target (a broken index): read this run from the start
                        log.info("seek to pts %s of %s landed late; reading from the start", key, path)
                        container.seek(info.pts[0], stream=stream, backward=True, any_frame=False)
                        self._decode_run(container, stream, info, run, size, out, skip, strict_start=False)
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
    def _decode_run(container, stream, info, run, size, out, skip=None, strict_start=True) -> bool:
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
            if skip is not None:
                skip.before(packet)
            for frame in packet.decode():
                timing.count("decoded_frames")
                if frame.pts is None:
                    continue
                if first and strict_start and frame.pts > info.pts[run[0]]:
                    return False
                first = False
                pos = wanted.pop(frame.pts, None)
                if pos is not None:
                    with timing.stage("convert"):
                        rgb = frame.to_ndarray(width=width, height=height, format="rgb24")
                        out[pos] = apply_rotation(rgb, info.rotation)
                if frame.pts >= last or not wanted:
                    return True
        return True


class _Skipper:
    """Sets the decoder's ``skip_frame`` per packet: decode targets in full, let it drop
    non-reference frames that are not targets. (Frame threads copy the setting at each
    packet's submission, so it is per packet there too.)"""

    __slots__ = ("cc", "targets", "mode")

    def __init__(self, cc, targets: set[int]):
        self.cc = cc
        self.targets = targets
        self.mode = None

    def before(self, packet) -> None:
        mode = "DEFAULT" if packet.pts is None or packet.pts in self.targets else "NONREF"
        if mode != self.mode:
            self.cc.skip_frame = mode
            self.mode = mode
