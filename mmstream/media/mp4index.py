"""Frame timestamps of an MP4/MOV video from its index alone, without reading the samples.

    offsets = composition_offsets(fileobj)[track]      # ctts of a track, one per sample, or None

FFmpeg reads an MP4's sample tables (``moov``) when it opens the file, and PyAV exposes
them as ``stream.index_entries``: each sample's decode timestamp, key-frame flag, byte
position and size. A frame's presentation timestamp is its decode timestamp plus the
composition offset in the track's ``ctts`` box, which this module reads from the
``moov`` box (a few reads of box headers, then the box). For remote media that makes
the probe cost the index, not the whole object; :func:`mmstream.media.probe.probe_video`
uses it there, and tests check it against a full demux.

    facts = video_facts(fileobj)                        # duration, frames, key frames, size

:func:`video_facts` reads only box headers and a few fields by seeking (about 70 us
of CPU a local file): the record index costs every group's videos with it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

#: ``read(position, size) -> bytes``: a file, or a box already in memory.
Reader = Callable[[int, int], bytes]


def _file_reader(f: BinaryIO) -> Reader:
    def read(pos: int, n: int) -> bytes:
        f.seek(pos)
        return f.read(n)
    return read


def _walk(read: Reader, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``[start, end)``."""
    pos = start
    while pos + 8 <= end:
        head = read(pos, 16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        hlen = 8
        if size == 1:
            size, hlen = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < hlen or pos + size > end:
            return
        yield bytes(kind), pos + hlen, pos + size
        pos += size


def _find(read: Reader, start: int, end: int, path: list[bytes]) -> Optional[tuple[int, int]]:
    """The payload span of the box at ``path`` (types, outermost first) inside ``[start, end)``."""
    for kind, a, b in _walk(read, start, end):
        if kind == path[0]:
            return (a, b) if len(path) == 1 else _find(read, a, b, path[1:])
    return None


def _field(read: Reader, pos: int, fmt: str) -> tuple:
    data = read(pos, struct.calcsize(fmt))
    return struct.unpack(fmt, data)  # struct.error when the box is cut short


def _moov(f: BinaryIO) -> Optional[tuple[int, int]]:
    """The ``moov`` box's payload span, found by walking the top-level box headers."""
    f.seek(0, 2)
    return _find(_file_reader(f), 0, f.tell(), [b"moov"])


def composition_offsets(f: BinaryIO) -> Optional[list[Optional[list[int]]]]:
    """For each track of an MP4, the composition offset of every sample (0 when there is
    no ``ctts``), or None for a track this reader does not vouch for (an edit list of more
    than a single shift: the caller demuxes instead); None when there is no ``moov``.
    The ``moov`` box is read in one piece (one request for a remote file)."""
    span = _moov(f)
    if span is None:
        return None
    f.seek(span[0])
    moov = f.read(span[1] - span[0])
    if len(moov) != span[1] - span[0]:
        return None
    data = memoryview(moov)

    def read(pos: int, n: int) -> bytes:
        return bytes(data[pos:pos + n])

    try:
        return [_track_offsets(read, a, b) for kind, a, b in _walk(read, 0, len(data)) if kind == b"trak"]
    except struct.error:  # a box shorter than its fields: let FFmpeg's demuxer decide
        return None


def _track_offsets(read: Reader, a: int, b: int) -> Optional[list[int]]:
    elst = _find(read, a, b, [b"edts", b"elst"])
    if elst is not None and _field(read, elst[0] + 4, ">I")[0] > 1:
        return None  # an empty edit or several segments: let FFmpeg's demuxer decide
    stbl = _find(read, a, b, [b"mdia", b"minf", b"stbl"])
    if stbl is None:
        return None
    stsz = _find(read, stbl[0], stbl[1], [b"stsz"])
    if stsz is None:
        return None
    samples = _field(read, stsz[0] + 8, ">I")[0]
    ctts = _find(read, stbl[0], stbl[1], [b"ctts"])
    if ctts is None:
        return [0] * samples
    version, count = read(ctts[0], 1)[0], _field(read, ctts[0] + 4, ">I")[0]
    table = read(ctts[0] + 8, 8 * count)
    out: list[int] = []
    for n, offset in struct.iter_unpack(">Ii" if version == 1 else ">II", table[:len(table) // 8 * 8]):
        if offset >= 1 << 31:  # version 0 files that store negative offsets anyway
            offset -= 1 << 32
        out.extend([offset] * n)
    return out if len(out) == samples else None


@dataclass(frozen=True)
class VideoFacts:
    """What an MP4/MOV's index says about its first video track, without reading a sample."""

    seconds: float  # the track's duration
    frames: int  # samples (frames) in the track
    keyframes: int  # sync samples (every frame when the track has no ``stss``)
    width: int  # track size (before any rotation; only its area is used)
    height: int


def video_facts(f: BinaryIO) -> Optional[VideoFacts]:
    """Duration, frame and key-frame counts and size of the first video track, from box
    headers and a few fields inside ``moov`` (read by seeking: no sample table is read);
    None when the file has no ``moov`` or no video track this reader understands."""
    try:
        moov = _moov(f)
        if moov is None:
            return None
        read = _file_reader(f)
        for kind, a, b in _walk(read, moov[0], moov[1]):
            if kind == b"trak":
                facts = _track_facts(read, a, b)
                if facts is not None:
                    return facts
    except (OSError, struct.error):  # a box shorter than its fields
        return None
    return None


def _track_facts(read: Reader, a: int, b: int) -> Optional[VideoFacts]:
    mdia = _find(read, a, b, [b"mdia"])
    if mdia is None:
        return None
    hdlr = _find(read, mdia[0], mdia[1], [b"hdlr"])
    if hdlr is None or read(hdlr[0] + 8, 4) != b"vide":
        return None
    mdhd = _find(read, mdia[0], mdia[1], [b"mdhd"])
    tkhd = _find(read, a, b, [b"tkhd"])
    stbl = _find(read, mdia[0], mdia[1], [b"minf", b"stbl"])
    if mdhd is None or tkhd is None or stbl is None:
        return None
    version = read(mdhd[0], 1)[0]
    scale, duration = _field(read, mdhd[0] + 20, ">IQ") if version == 1 else _field(read, mdhd[0] + 12, ">II")
    width, height = (v >> 16 for v in _field(read, tkhd[1] - 8, ">II"))  # tkhd's last 8 bytes, 16.16
    stsz = _find(read, stbl[0], stbl[1], [b"stsz"])
    if stsz is None or not scale:
        return None
    frames = _field(read, stsz[0] + 8, ">I")[0]
    stss = _find(read, stbl[0], stbl[1], [b"stss"])
    keyframes = _field(read, stss[0] + 4, ">I")[0] if stss is not None else frames
    if frames < 1:
        return None
    return VideoFacts(duration / scale, frames, max(1, min(keyframes, frames)), width, height)


__all__ = ["composition_offsets", "video_facts", "VideoFacts"]
