"""Frame timestamps of an MP4/MOV video from its index alone, without reading the samples.

    offsets = composition_offsets(fileobj)[track]      # ctts of a track, one per sample, or None

FFmpeg reads an MP4's sample tables (``moov``) when it opens the file, and PyAV exposes
them as ``stream.index_entries``: each sample's decode timestamp, key-frame flag, byte
position and size. A frame's presentation timestamp is its decode timestamp plus the
composition offset in the track's ``ctts`` box, which this module reads from the
``moov`` box (a few reads of box headers, then the box). For remote media that makes
the probe cost the index, not the whole object; :func:`mmstream.media.probe.probe_video`
uses it there, and tests check it against a full demux.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, Optional

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _boxes(data: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield bytes(kind), pos + head, pos + size
        pos += size


def _find_moov(f: BinaryIO) -> Optional[bytes]:
    """The ``moov`` box's bytes, found by walking the top-level box headers."""
    pos = 0
    f.seek(0, 2)
    total = f.tell()
    while pos + 8 <= total:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return None
        size, kind = struct.unpack(">I4s", head[:8])
        hlen = 8
        if size == 1:
            size, hlen = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = total - pos
        if size < hlen:
            return None
        if kind == b"moov":
            f.seek(pos)
            data = f.read(size)
            return data if len(data) == size else None
        pos += size
    return None


def _track_boxes(moov: memoryview):
    for kind, a, b in _boxes(moov, 8 if bytes(moov[4:8]) == b"moov" else 0, len(moov)):
        if kind == b"trak":
            yield a, b


def _child(data: memoryview, start: int, end: int, path: list[bytes]) -> Optional[tuple[int, int]]:
    for kind, a, b in _boxes(data, start, end):
        if kind == path[0]:
            return (a, b) if len(path) == 1 else _child(data, a, b, path[1:])
    return None


def composition_offsets(f: BinaryIO) -> Optional[list[Optional[list[int]]]]:
    """For each track of an MP4, the composition offset of every sample (0 when there is
    no ``ctts``), or None for a track this reader does not vouch for (an edit list of more
    than a single shift: the caller demuxes instead); None when there is no ``moov``."""
    moov = _find_moov(f)
    if moov is None:
        return None
    data = memoryview(moov)
    return [_track_offsets(data, a, b) for a, b in _track_boxes(data)]


def _track_offsets(data: memoryview, a: int, b: int) -> Optional[list[int]]:
    elst = _child(data, a, b, [b"edts", b"elst"])
    if elst is not None:
        count = struct.unpack(">I", data[elst[0] + 4:elst[0] + 8])[0]
        if count > 1:
            return None  # an empty edit or several segments: let FFmpeg's demuxer decide
    stbl = _child(data, a, b, [b"mdia", b"minf", b"stbl"])
    if stbl is None:
        return None
    stsz = _child(data, stbl[0], stbl[1], [b"stsz"])
    if stsz is None:
        return None
    samples = struct.unpack(">I", data[stsz[0] + 8:stsz[0] + 12])[0]
    ctts = _child(data, stbl[0], stbl[1], [b"ctts"])
    if ctts is None:
        return [0] * samples
    version = data[ctts[0]]
    count = struct.unpack(">I", data[ctts[0] + 4:ctts[0] + 8])[0]
    fmt = ">Ii" if version == 1 else ">II"
    out: list[int] = []
    pos = ctts[0] + 8
    for _ in range(count):
        n, offset = struct.unpack(fmt, data[pos:pos + 8])
        if offset >= 1 << 31:  # version 0 files that store negative offsets anyway
            offset -= 1 << 32
        out.extend([offset] * n)
        pos += 8
    return out if len(out) == samples else None


__all__ = ["composition_offsets"]
