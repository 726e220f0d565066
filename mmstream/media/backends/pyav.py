"""PyAV backend: decodes each needed frame's dependency chain once, and nothing more.

Three rules, each measured in ``benchmarks/`` (``decode_limit.py`` times the least
decoding exact sampling needs, beside this reader):

* **Segments, drained.** The targets are grouped by the key frame each is decoded
  from (:func:`seek_plan`). A segment sends packets from its key frame until every
  target's packet has been sent, then drains the decoder: the frames it holds back
  for reordering come out without feeding it more packets (which would decode frames
  nobody needs: on noisy short-GOP video, 12% of the instructions). The packets up to
  the next segment's key frame are read but not decoded, or skipped by a seek when
  that key frame lies more than ``MIN_SEEK_GAP`` frames on; it never seeks backwards.
  A target shown before a later key frame but decoded after it (open GOPs) carries
  its segment on into the next one without a reset.
* **Non-reference frames that are not targets are not decoded.** In H.264 a frame
  with ``nal_ref_idc == 0`` (and in HEVC a sub-layer non-reference picture of a
  stream without temporal sub-layers) is never used to predict another frame, so
  the decoder is told to skip it (``skip_frame = NONREF``) unless it is a target.
  The decoder's output for every other frame is bit-identical (tests compare
  against a plain decode). With x264's default B-pyramid that is about 40% of the
  frames. So the frames decoded are exactly those ``decode_limit.py`` counts as
  needed (a test checks it).
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
from av.video.reformatter import VideoReformatter

from ... import timing
from ...errors import DECODE_ERROR, SampleError
from ..bounds import FFmpegBound
from ..probe import VideoInfo, apply_rotation, open_container
from .base import Backend

log = logging.getLogger(__name__)

#: A segment of the decode: (pts of the key frame to start sending packets at, or None
#: for the stream's first packet; whether to seek there first; the target positions).
Segment = tuple[Optional[int], bool, list[int]]

#: Seek only when it skips more than this many frames; nearer key frames are reached by
#: reading on (packets read are not decoded): a seek costs a demuxer reset and, on object
#: storage, a new range request.
MIN_SEEK_GAP = 16


def key_before(info: VideoInfo, pts: int) -> int:
    """pts of the last key frame at or before ``pts`` (the first key frame if none)."""
    return info.keyframes[max(bisect_right(info.keyframes, pts) - 1, 0)]


def seek_plan(info: VideoInfo, positions: Sequence[int], seek: bool = True,
              min_gap: int = MIN_SEEK_GAP) -> list[Segment]:
    """Group sorted target positions by the key frame each is decoded from.

    Each segment is decoded from its key frame (the last at or before its first
    target's time) until every target's packet has been sent; then the decoder is
    drained (the frames it holds back for reordering come out without decoding more
    packets) and reset, and the packets up to the next segment's key frame are read but
    not decoded. A segment seeks to its key frame when that lies more than ``min_gap``
    frames after the previous segment's last target (the first: after the start), so
    it never seeks backwards. The first segment starts at the stream's first packet
    when its key frame is the first one. ``seek=False`` gives a single segment from the
    first packet (the plain sequential read).
    """
    if not seek:
        return [(None, False, list(positions))] if positions else []
    segments: list[Segment] = []
    last = -1  # position of the previous segment's last target (-1: before the first frame)
    for pos in positions:
        key = key_before(info, info.pts[pos])
        if segments and segments[-1][0] == key or (segments and segments[-1][0] is None
                                                      and key == info.keyframes[0]):
            segments[-1][2].append(pos)
        else:
            key_pos = bisect_right(info.pts, key) - 1
            jump = key_pos - last > min_gap
            start = None if not segments and not jump and key == info.keyframes[0] else key
            segments.append((start, jump, [pos]))
        last = pos
    return segments


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
        rows = {p: np.empty((size[1], size[0], 3), np.uint8) for p in positions}
        filled = self._read(path, info, positions, size, rows, threads, salvage)
        return {p: rows[p] for p in positions if p in filled}

    def read_into(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
                  rows, threads: int = 1, salvage: bool = False) -> set[int]:
        if type(self).read is not PyAVBackend.read:  # a subclass that wraps read() keeps being called through it
            return super().read_into(path, info, positions, size, rows, threads, salvage)
        return self._read(path, info, positions, size, rows, threads, salvage)

    def _read(self, path, info, positions, size, rows, threads, salvage) -> set[int]:
        from ... import storage

        out: set[int] = set()
        bound = FFmpegBound(picture_bound(info)).options  # no log capture: the probe named the size
        try:
            with storage.open_media(path) as source, open_container(source, bound, info.from_index) as container:
                stream = container.streams.video[0]
                stream.codec_context.options = dict(bound)
                count, kind = decoder_threads(threads)
                if kind:
                    stream.thread_type = kind
                stream.codec_context.thread_count = count
                skip = _Skipper(stream.codec_context, {info.pts[p] for p in positions}) \
                    if self.skip_nonref and can_skip_nonref(info) else None
                self._decode_segments(container, stream, info, seek_plan(info, positions, self.seek), size,
                                      rows, out, skip, path, count)
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
    def _decode_segments(container, stream, info, segments, size, rows, out, skip, path, threads) -> None:
        """Decode each segment's targets into ``rows`` (see :func:`seek_plan`), adding each
        position written to ``out``; the scaler uses the decoder's ``threads``."""
        cc = stream.codec_context
        width, height = size
        if info.rotation in (90, 270):
            width, height = height, width  # scale before rotating
        wanted: dict[int, int] = {}  # pts -> position, targets not yet out of the decoder
        # One scaler for the whole read, with the decoder's threads: VideoFrame.to_ndarray(width=...)
        # sets up a new swscale context for every frame, each starting a thread per CPU of the
        # machine (its default), whatever the cores this worker was given
        scaler = VideoReformatter()

        def take(frames) -> None:
            for frame in frames:
                timing.count("decoded_frames")
                pos = wanted.pop(frame.pts, None) if frame.pts is not None else None
                if pos is not None:
                    with timing.stage("convert"):
                        rgb = scaler.reformat(frame, width=width, height=height, format="rgb24",
                                              threads=threads).to_ndarray()
                        rows[pos][...] = apply_rotation(rgb, info.rotation)
                        out.add(pos)

        packets = None
        i = 0
        while i < len(segments):
            key, jump, run = segments[i]
            if jump:
                container.seek(key, stream=stream, backward=True, any_frame=False)
                packets = None
            if packets is None:
                packets = container.demux(stream)
            pending = {info.pts[p] for p in run}  # targets whose packets are still to be sent
            wanted.update((info.pts[p], p) for p in run)
            following = i + 1  # the next segment, merged into this one if its key frame is sent now
            sending = key is None
            for packet in packets:
                if packet.size == 0:  # end of stream
                    break
                if not sending:
                    if packet.pts == key:
                        sending = True
                    elif packet.pts in pending or (packet.is_keyframe and packet.pts is not None
                                                    and packet.pts > key):
                        break  # past the key frame without meeting it: a seek that landed late
                    else:
                        continue  # before the key frame: read, not decoded
                if skip is not None:
                    skip.before(packet)
                take(cc.decode(packet))
                pending.discard(packet.pts)
                if following < len(segments) and packet.pts == segments[following][0]:
                    # the next segment's key frame was needed here (a target shown before it,
                    # decoded after it: open GOPs): go on into that segment without a reset
                    pending.update(info.pts[p] for p in segments[following][2])
                    wanted.update((info.pts[p], p) for p in segments[following][2])
                    following += 1
                if not pending:
                    break
            if not sending:
                # a broken index: read this segment from the stream's start
                log.info("key frame at pts %s of %s not found where the index puts it; reading from the start",
                         key, path)
                container.seek(info.pts[0], stream=stream, backward=True, any_frame=False)
                packets = container.demux(stream)
                segments[i] = (None, False, run)
                continue
            take(cc.decode(None))  # drain: the frames held back for reordering, no more packets decoded
            cc.flush_buffers()
            i = following


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
