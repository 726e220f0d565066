"""Images of every bit depth and mode PIL opens come out as 8-bit RGB by scaling, not clipping."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.errors import SampleError
from mmstream.media.images import to_rgb8
from mmstream.types import Drop, Sample

W, H = 64, 16
RAMP16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))  # a gradient over the full range
RAMP8 = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))


def png16(path, array):
    """A real 16-bit PNG (grey [H, W] or RGB [H, W, 3]), written by hand: PIL cannot write 48-bit RGB."""
    colour = 2 if array.ndim == 3 else 0
    rows = array.astype(">u2").reshape(array.shape[0], -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 16, colour, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def grey3(a):
    return np.repeat(a[:, :, None], 3, axis=2).astype(np.int32)


def cases(tmp_path):
    """mode -> (file, expected uint8 RGB)."""
    out = {}
    expected16 = grey3(np.rint(RAMP16 / 257))
    out["I;16 (16-bit grey PNG)"] = (png16(tmp_path / "g16.png", RAMP16), expected16)
    p = tmp_path / "i32.tif"
    Image.fromarray(RAMP16.astype(np.int32), mode="I").save(p)
    out["I (32-bit grey TIFF of 16-bit data)"] = (p, expected16)
    p = tmp_path / "f.tif"
    Image.fromarray((RAMP16 / 65535).astype(np.float32), mode="F").save(p)
    out["F (float grey TIFF, 0..1)"] = (p, expected16)
    rgb = np.stack([RAMP8, RAMP8[:, ::-1], np.full_like(RAMP8, 100)], axis=2)
    rgb48 = np.stack([RAMP16, RAMP16[:, ::-1], np.full_like(RAMP16, 100 * 257)], axis=2)
    out["48-bit RGB PNG"] = (png16(tmp_path / "rgb48.png", rgb48), rgb.astype(np.int32))
    p = tmp_path / "la.png"
    Image.fromarray(np.stack([RAMP8, np.full_like(RAMP8, 255)], axis=2), mode="LA").save(p)
    out["LA (opaque)"] = (p, grey3(RAMP8))
    p = tmp_path / "la_half.png"
    Image.fromarray(np.stack([RAMP8, np.full_like(RAMP8, 128)], axis=2), mode="LA").save(p)
    out["LA (half transparent, on white)"] = (p, grey3((RAMP8.astype(np.int32) * 128 + 255 * 127 + 127) // 255))
    p = tmp_path / "p.png"
    Image.fromarray(RAMP8, mode="L").convert("P").save(p)  # a palette holding the grey ramp
    out["P"] = (p, grey3(RAMP8))
    p = tmp_path / "cmyk.tif"
    Image.fromarray(rgb, mode="RGB").convert("CMYK").save(p)
    out["CMYK"] = (p, rgb.astype(np.int32))
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full_like(RAMP8, 255)]), mode="RGBA").save(p)
    out["RGBA (opaque)"] = (p, rgb.astype(np.int32))
    p = tmp_path / "l.png"
    Image.fromarray(RAMP8, mode="L").save(p)
    out["L"] = (p, grey3(RAMP8))
    return out


def test_each_mode_round_trips_within_one_level(tmp_path):
    for name, (path, expected) in cases(tmp_path).items():
        with Image.open(path) as im:
            got = to_rgb8(im)
        assert got.dtype == np.uint8 and got.shape == (H, W, 3), name
        err = np.abs(got.astype(np.int32) - expected).max()
        assert err <= 1, f"{name}: max error {err}"


def test_sixteen_bit_grey_is_not_saturated_through_the_stream(tmp_path):
    png16(tmp_path / "depth.png", RAMP16)
    ann = write_jsonl(tmp_path / "a.jsonl", [{"id": "d", "image": "depth.png", "conversations": [
        {"from": "human", "value": "<image>\nDepth?"}, {"from": "gpt", "value": "far"}]}])
    sample = next(iter(StreamingDataset({"sources": [{"name": "s", "format": "llava", "annotations": ann}]})))
    frame = sample.clips[0].frames[0]
    assert (frame[:, :, 0] == 255).mean() < 0.05  # PIL's convert("RGB") makes ~all of it 255
    assert np.abs(frame[..., 0].astype(int) - np.rint(RAMP16 / 257)).max() <= 1


@pytest.mark.parametrize("mode,values", [("I", np.array([[-5, 70000]], np.int32)),
                                         ("F", np.array([[0.0, 12.5]], np.float32))])
def test_values_with_no_faithful_8_bit_picture_are_a_decode_error(tmp_path, mode, values):
    p = tmp_path / "x.tif"
    Image.fromarray(values, mode=mode).save(p)
    with Image.open(p) as im, pytest.raises(SampleError) as err:
        to_rgb8(im)
    assert err.value.reason == "decode_error"
    ann = write_jsonl(tmp_path / "a.jsonl", [{"id": "d", "image": "x.tif", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}])
    items = list(StreamingDataset({"sources": [{"name": "s", "format": "llava", "annotations": ann}]},
                                  emit_drops=True))
    assert [type(i) for i in items] == [Drop] and items[0].reason == "decode_error"
    assert not any(isinstance(i, Sample) for i in items)
