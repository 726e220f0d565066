"""Media files whose headers lie about their size, made small: an H.264 stream whose
sequence parameter set (SPS) declares a huge picture, a Matroska file whose track header
declares 65535 x 65535, a PNG whose IHDR does. Each is a few KB on disk; a decoder that
believes the header allocates hundreds of MB (or refuses)."""
from __future__ import annotations

import fractions
import struct
import zlib
from pathlib import Path

import av
import numpy as np

START = b"\x00\x00\x00\x01"


class _Bits:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:  # Exp-Golomb
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)


class _Writer:
    def __init__(self):
        self.bits: list[int] = []

    def u(self, n: int, v: int) -> None:
        self.bits += [(v >> (n - 1 - i)) & 1 for i in range(n)]

    def ue(self, v: int) -> None:
        v += 1
        self.u(v.bit_length() - 1, 0)
        self.u(v.bit_length(), v)

    def data(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def _escape(rbsp: bytes) -> bytes:
    """Emulation prevention: a 0x03 after two zero bytes before any byte <= 3."""
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def resize_sps(nal: bytes, width_mbs: int, height_mbs: int) -> bytes:
    """An SPS NAL unit (header byte first) declaring ``width_mbs`` x ``height_mbs``
    macroblocks of 16 x 16, without cropping; every other field as it was (baseline
    profile and pic_order_cnt_type 0 or 2, as libx264's baseline writes)."""
    r, w = _Bits(nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")), _Writer()
    profile = r.u(8)
    assert profile == 66, "baseline profile only"
    w.u(8, profile)
    w.u(8, r.u(8))  # constraint flags
    w.u(8, r.u(8))  # level
    w.ue(r.ue())  # seq_parameter_set_id
    w.ue(r.ue())  # log2_max_frame_num_minus4
    poc = r.ue()
    assert poc in (0, 2)
    w.ue(poc)
    if poc == 0:
        w.ue(r.ue())
    w.ue(r.ue())  # max_num_ref_frames
    w.u(1, r.u(1))  # gaps_in_frame_num_value_allowed_flag
    r.ue(), r.ue()
    w.ue(width_mbs - 1)
    w.ue(height_mbs - 1)
    frame_mbs_only = r.u(1)
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, r.u(1))
    w.u(1, r.u(1))  # direct_8x8_inference_flag
    if r.u(1):  # cropping: dropped
        for _ in range(4):
            r.ue()
    w.u(1, 0)
    while r.pos < len(r.data) * 8:  # VUI and the trailing bits, as they were
        w.u(1, r.u(1))
    return nal[:1] + _escape(w.data().rstrip(b"\x00"))


def lying_h264(path: Path, width_mbs: int, height_mbs: int, size: tuple[int, int] = (64, 48),
               frames: int = 2) -> Path:
    """An H.264 stream of ``size`` pictures in Matroska whose SPS (and so the track
    header the muxer writes from it) declares ``16 * width_mbs`` x ``16 * height_mbs``."""
    raw = path.with_suffix(".h264")
    w, h = size
    with av.open(str(raw), "w", format="h264") as out:
        s = out.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"profile": "baseline", "x264-params": "keyint=1"}
        for i in range(frames):
            img = np.full((h, w, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    nals = raw.read_bytes().split(START)
    raw.write_bytes(START.join(resize_sps(n, width_mbs, height_mbs) if n and n[0] & 0x1F == 7 else n
                               for n in nals))
    with av.open(str(raw), format="h264") as src, av.open(str(path), "w", format="matroska") as out:
        stream = src.streams.video[0]
        dst = out.add_stream_from_template(stream)
        for k, packet in enumerate(p for p in src.demux(stream) if p.size):
            packet.stream = dst
            packet.pts = packet.dts = k
            packet.time_base = fractions.Fraction(1, 5)
            out.mux(packet)
    raw.unlink()
    return path


def mkv_declaring(path: Path, width: int, height: int) -> Path:
    """An honest 256 x 256 H.264 Matroska file whose track header then declares
    ``width`` x ``height`` (up to 65535: PixelWidth and PixelHeight rewritten in place)."""
    lying_h264(path, 16, 16, size=(256, 256))
    data = path.read_bytes()
    for element, value in ((b"\xb0", width), (b"\xba", height)):  # PixelWidth, PixelHeight: 2-byte 256
        old = element + b"\x82\x01\x00"
        assert data.count(old) == 1, "track header not found"
        data = data.replace(old, element + b"\x82" + struct.pack(">H", value))
    path.write_bytes(data)
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(path: Path, width: int, height: int, filled: bool = False) -> Path:
    """A grey PNG whose IHDR declares ``width`` x ``height``. ``filled``: its data holds
    every row (zeros, compressed about 1000 to 1: a decompression bomb of
    ``width * height`` bytes in a file a thousandth of that); else none (only the header
    is true to its word)."""
    data = zlib.compressobj(9)
    idat = b""
    if filled:
        row = bytes(width + 1)  # filter byte, then the row
        parts = [data.compress(row * min(256, height - y)) for y in range(0, height, 256)]
        idat = b"".join(parts)
    idat += data.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path
