"""Still images (and frame-folder frames) to 8-bit RGB, whatever their mode and bit depth.

    rgb = to_rgb8(Image.open(path))     # uint8 [H, W, 3]; SampleError(decode_error) if it cannot be faithful

PIL's own ``convert("RGB")`` clips high-bit-depth modes: a 16-bit grey image (depth
maps, medical frames) comes out saturated, every value above 255 of 65535 turned
white. Here each mode is scaled to 8 bits instead:

* ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit grey): v * 255 / 65535, rounded;
* ``I`` (32-bit integer grey, how some readers open 16-bit PNG and TIFF): scaled the
  same when every value lies in 0..65535 (16-bit data), kept when they lie in 0..255
  is not taken for 8-bit data (a dark 16-bit image looks the same); other ranges cannot be
  converted faithfully: ``decode_error``;
* ``F`` (32-bit float grey): values in [0, 1] are scaled by 255; other ranges
  (metres of depth, HDR) cannot be converted faithfully: ``decode_error``;
* ``RGBA``, ``LA``, ``La``, ``RGBa``, ``PA`` and ``P`` with transparency: composited on
  white, as a viewer shows them (the colours premultiplied modes store are undone first);
* ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: PIL's conversion,
  which is exact for 8-bit data. 48-bit RGB PNGs are opened by PIL as 8-bit ``RGB``
  (the high byte of each sample), which keeps the picture.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import DECODE_ERROR, SampleError

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA = ("RGBA", "LA", "La", "RGBa", "PA")


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def _scale16(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """``im`` as uint8 RGB ``[H, W, 3]`` (module docstring for each mode)."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in SIXTEEN_BIT:
        return _grey(_scale16(np.asarray(im)))
    if mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise SampleError(DECODE_ERROR, f"32-bit integer image with values {lo}..{hi}: no faithful 8-bit "
                                            f"picture (expected 16-bit data, 0..65535)")
        return _grey(_scale16(a))
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise SampleError(DECODE_ERROR, f"float image with values {lo:g}..{hi:g}: no faithful 8-bit picture "
                                            f"(expected 0..1)")
        return _grey(np.rint(a * 255))
    if mode in ALPHA or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)  # PIL un-premultiplies La/RGBa here
        rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:4]
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise SampleError(DECODE_ERROR, f"image mode {mode} cannot be converted to RGB: {exc}") from None


__all__ = ["to_rgb8"]
