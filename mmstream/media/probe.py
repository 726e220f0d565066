"""Container metadata without decoding: the presentation timestamps of every frame,
key frames, size and rotation. Enough to plan exactly which frames to decode, and
to count tokens before paying for a decode."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import av

from ..errors import DECODE_ERROR, NO_FRAMES, SampleError
from .bounds import FFmpegBound, check_pixels, ffmpeg_bound


@dataclass
class VideoInfo:
    pts: list[int]  # every frame's pts, presentation order (sorted), in time_base units
    keyframes: list[int]  # pts of key frames, sorted
    time_base: Fraction
    width: int  # display size: after rotation
    height: int
    rotation: int  # display-matrix angle (counter-clockwise degrees: 0, 90, 180, 270)
    last_duration: Optional[int]  # duration of the last frame in time_base units, when known
    codec: str
    temporal_layers: int = 1  # HEVC temporal sub-layers seen in the NAL headers (1 for other codecs)
    average_rate: Optional[float] = None  # the stream's average frame rate (what decord's get_avg_fps reports)
    from_index: bool = False  # read from the MP4 index (its demuxer states the reorder delay: see FAST_OPEN)

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def seconds(self, index: int) -> float:
        return float(self.pts[index] * self.time_base)

    @property
    def duration_seconds(self) -> float:
        """Span of the stream: last pts + the last frame's duration - first pts."""
        last = self.last_duration if self.last_duration is not None else (
            self.pts[-1] - self.pts[-2] if len(self.pts) > 1 else 0)
        return float((self.pts[-1] + last - self.pts[0]) * self.time_base)


def apply_rotation(frame, rotation: int):
    """Turn a decoded HxWx3 array upright the way the ffmpeg CLI's autorotate does.

    ``rotation`` is PyAV's ``VideoFrame.rotation`` (the display matrix angle,
    counter-clockwise degrees), so the array is rotated by that many quarter turns. A view
    (no copy): the caller writes it into the clip's row, the one copy it needs.
    """
    import numpy as np

    return np.rot90(frame, (rotation // 90) % 4)


#: Local files with these extensions are probed from their MP4 index (:func:`_probe_index`):
#: reading the index costs the ``moov`` box, a full demux reads the whole file.
INDEX_EXTS = (".mp4", ".m4v", ".mov")

#: Options for the probe's open: FFmpeg's stream analysis (``avformat_find_stream_info``)
#: decodes frames of H.264 (1 to 7, to guess the reorder delay) that the probe never uses;
#: the MP4 header already holds what it reads (size, time base, rates, the index). The
#: decode of a video probed from its MP4 index opens with them too (``VideoInfo.from_index``):
#: the MP4 demuxer states the reorder delay itself (H.264: from the composition offsets;
#: else the parameter sets give it), and the analysis cost ~10 ms a 720p H.264 clip. Other
#: containers' decodes keep the analysis, where it is what finds the delay.
FAST_OPEN = {"options": {"probesize": "32"}, "stream_options": [{"skip_frame": "all"}]}


def _hevc_temporal_layers(extradata: Optional[bytes]) -> int:
    """numTemporalLayers of an ``hvcC`` record (0: unknown, then 2 is assumed: no
    non-reference skipping)."""
    if extradata and len(extradata) > 22 and extradata[0] == 1:
        return ((extradata[21] >> 3) & 7) or 2
    return 2


def _nal_length_size(extradata: Optional[bytes]) -> int:
    """NAL length-prefix size of an ``hvcC`` record, 0 for Annex B (start codes)."""
    if extradata and len(extradata) > 22 and extradata[0] == 1:
        return (extradata[21] & 3) + 1
    return 0


def _hevc_temporal_id(data: memoryview, length_size: int) -> int:
    """TemporalId of the first NAL unit of an HEVC packet (0 when it cannot be read)."""
    if length_size:
        head = length_size
    else:  # Annex B: skip the start code
        head = 4 if bytes(data[:4]) == b"\0\0\0\1" else 3
    if len(data) < head + 2:
        return 0
    return max((data[head + 1] & 7) - 1, 0)


def _rotation(cc, packet) -> Optional[int]:
    """The display-matrix angle (:attr:`VideoInfo.rotation`) of the frame ``packet``
    decodes to, drained out of the decoder at once: waiting for it to come out by itself
    decodes the frames of the reorder delay too (2 more with B-frames, about 5 ms at
    720p). None when the packet gives no frame (the decoder then takes packets again)."""
    frames = cc.decode(packet) or cc.decode(None)
    if not frames:
        cc.flush_buffers()  # drained: it accepts packets again after a flush
        return None
    return int(frames[0].rotation or 0) % 360


def probe_video(path: str, from_index: Optional[bool] = None, max_pixels: Optional[int] = None) -> VideoInfo:
    """The video's frame timestamps, key frames, size and rotation; see :func:`_probe`.

    ``from_index`` (default: for remote media and local ``.mp4``/``.m4v``/``.mov`` files)
    reads the timestamps from an MP4/MOV's index (:mod:`.mp4index`) instead of demuxing
    every packet, so a video costs the bytes of its index and first frame, not the whole
    file; any other container, or an index it does not vouch for, is demuxed.

    ``max_pixels``: a stream whose pictures are declared larger is ``too_large``, refused
    before FFmpeg allocates one (:mod:`.bounds`)."""
    from .. import storage

    if from_index is None:
        from_index = storage.is_url(path) or path.lower().endswith(INDEX_EXTS)
    with ffmpeg_bound(max_pixels) as bound:
        try:
            info = _probe_index(path, bound) if from_index else None
            if info is None:
                info = _probe(path, bound)
        except SampleError:
            bound.check(path)  # a picture FFmpeg refused for its size is why it failed
            raise
        bound.check(path)
    return info


def open_container(source, options: dict, fast: bool):
    """``av.open`` with format ``options``; ``fast``: without FFmpeg's stream analysis
    (:data:`FAST_OPEN`)."""
    if fast:
        return av.open(source, metadata_errors="ignore", options={**FAST_OPEN["options"], **options},
                       stream_options=FAST_OPEN["stream_options"])
    return av.open(source, metadata_errors="ignore", options=options)


def _open(source, bound: FFmpegBound, path: str, fast: bool = False):
    """:func:`open_container` with FFmpeg's picture bound, then the declared size checked
    before any frame is decoded."""
    container = open_container(source, bound.options, fast)
    try:
        for stream in container.streams.video[:1]:
            cc = stream.codec_context
            check_pixels(cc.width, cc.height, bound.limit, path)
            if bound.options:
                cc.options = dict(bound.options)
        bound.check(path)
    except BaseException:
        container.close()
        raise
    return container


def _probe_index(path: str, bound: FFmpegBound) -> Optional[VideoInfo]:
    from .. import storage
    from .mp4index import composition_offsets

    try:
        with storage.open_media(path) as source:
            if isinstance(source, str):
                with open(source, "rb") as f:
                    offsets = composition_offsets(f)
            else:
                offsets = composition_offsets(source)
                source.seek(0)
            if not offsets:
                return None
            with _open(source, bound, path, fast=True) as container:
                if not container.streams.video or "mp4" not in container.format.name:
                    return None
                stream = container.streams.video[0]
                entries = list(stream.index_entries)
                if stream.index >= len(offsets) or offsets[stream.index] is None or not entries \
                        or len(entries) != len(offsets[stream.index]) or any(e.is_discard for e in entries):
                    return None
                cc = stream.codec_context
                cc.thread_count = 1
                rotation = None
                for packet in container.demux(stream):  # the first frame only, for the display matrix
                    rotation = _rotation(cc, packet)
                    if rotation is not None:
                        break
                rotation = rotation or 0
                pts = [e.timestamp + off for e, off in zip(entries, offsets[stream.index])]
                keys = sorted(p for p, e in zip(pts, entries) if e.is_keyframe)
                pts.sort()
                width, height, codec = cc.width, cc.height, cc.name
                layers = _hevc_temporal_layers(cc.extradata) if codec == "hevc" else 1
                time_base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
                rate = stream.average_rate or stream.guessed_rate
    except SampleError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError):
        return None  # let the full probe decide (and report) what is wrong
    if rotation in (90, 270):
        width, height = height, width
    last = None
    if len(pts) == 1 and rate:
        last = int(round(1 / (Fraction(rate.numerator, rate.denominator) * time_base)))
    # HEVC temporal sub-layers: the count the hvcC record declares (unknown: assume some)
    return VideoInfo(pts=pts, keyframes=keys or [pts[0]], time_base=time_base, width=width, height=height,
                     rotation=rotation, last_duration=last, codec=codec,
                     temporal_layers=layers, average_rate=float(rate) if rate else None, from_index=True)


def _probe(path: str, bound: FFmpegBound) -> VideoInfo:
    """Read every packet header of the first video stream (no decoding).

    Raises :class:`SampleError` (``decode_error`` / ``no_frames``) for files that are not
    readable video.
    """
    from .. import storage

    try:
        with storage.open_media(path) as source, _open(source, bound, path) as container:
            if not container.streams.video:
                raise SampleError(NO_FRAMES, "no video stream", path=path)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one frame is decoded, for its rotation
            hevc = stream.codec_context.name == "hevc"
            length_size = _nal_length_size(stream.codec_context.extradata) if hevc else 0
            max_tid = 0
            pts, keys = [], []
            last_duration = None
            missing_pts = False
            rotation = None
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at end of stream
                    continue
                if packet.pts is None:
                    missing_pts = True
                    continue
                pts.append(packet.pts)
                if hevc:
                    max_tid = max(max_tid, _hevc_temporal_id(memoryview(packet), length_size))
                if rotation is None:  # the display matrix rides on decoded frames
                    rotation = _rotation(stream.codec_context, packet)
                if packet.is_keyframe:
                    keys.append(packet.pts)
                if packet.duration:
                    last_duration = packet.duration  # overwritten below by the max-pts packet
            cc = stream.codec_context
            width, height, codec = cc.width, cc.height, cc.name
            time_base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
            rate = stream.average_rate or stream.guessed_rate
            rotation = rotation or 0
    except SampleError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise SampleError(DECODE_ERROR, f"cannot open video: {exc}", path=path) from None
    if missing_pts and not pts:
        raise SampleError(DECODE_ERROR, "packets carry no timestamps", path=path)
    if not pts:
        raise SampleError(NO_FRAMES, "video stream has no frames", path=path)
    pts.sort()
    keys.sort()
    if len(pts) > 1:
        last_duration = None  # the fps rule uses the gap between the last two frames
    elif not last_duration and rate:
        last_duration = int(round(1 / (Fraction(rate.numerator, rate.denominator) * time_base)))
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(pts=pts, keyframes=keys or [pts[0]], time_base=time_base, width=width,
                     height=height, rotation=rotation, last_duration=last_duration, codec=codec,
                     temporal_layers=max_tid + 1, average_rate=float(rate) if rate else None)
