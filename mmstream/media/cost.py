"""What decoding a group will cost, from its media's facts and the sampling plan (pure
functions; nothing here opens a file).

    costs = group_costs(facts, sampling)    # seconds of one core, per group (numpy, vectorised)

The unit is CPU seconds on the machine the constants were measured on (PyAV, one decode
thread, 2-core x86 VM: ``benchmarks/cost_fit.py`` measures them); only ratios matter, because
costs balance a split (:func:`mmstream.stream.split_by_cost`) and order the Ray engine's
tasks. A video's cost follows what its decode does:

* **planned frames** ``n``: the sampling rule on the video's duration (``fps`` x seconds,
  then the ``max_frames`` cap; qwen-vl-utils' rule when configured);
* **decoded frames**: a decoder reads from the key frame before each target, so with
  targets closer than a GOP it decodes the whole video up to the last one, and with sparse
  targets about half a GOP per target: ``min(frames, n x (GOP / 2 + 1))``;
* cost = ``OPEN_S + decoded x pixels x DECODE_S_PER_PIXEL + n x output pixels x
  OUTPUT_S_PER_PIXEL`` (the last term: colour conversion, resize and JPEG encoding).

So dense sampling (fps 1, no cap) of a 30-minute video costs 30 minutes of decoding, and
24 capped frames of it cost 24 half-GOPs. A video the index has no facts for (not an
MP4/MOV, or at a URL) is estimated from its bytes (``UNPROBED_*``); images, frame folders
and text pages have their own terms.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: One row per decode group: what the index read about its media without decoding
#: (sums over the group's media; ``pixels`` is the largest video frame's).
FACTS_DTYPE = np.dtype([
    ("bytes", "<f8"),  # every medium's file size (a frame folder: 0)
    ("videos", "<u2"),  # video files
    ("probed", "<u2"),  # ... of which the container index gave the facts below
    ("seconds", "<f4"),  # probed videos: duration
    ("frames", "<f4"),  # ... frames
    ("keyframes", "<f4"),  # ... key frames
    ("pixels", "<f4"),  # ... frame size (width x height), the largest
    ("unprobed_bytes", "<f8"),  # bytes of the videos without facts
    ("images", "<u2"),  # image files
    ("image_bytes", "<f8"),
    ("folder_frames", "<u4"),  # files in frame folders
    ("pages", "<u2"),  # text rendered as pages
])

#: Seconds to open and probe a medium, whatever its length.
OPEN_S = 0.02
#: Seconds per decoded pixel (H.264/HEVC, one thread: a 720p frame in about 1.4 ms).
DECODE_S_PER_PIXEL = 1.5e-9
#: Seconds per output pixel of a kept frame (RGB conversion, resize, JPEG: a 720p frame in ~12 ms).
OUTPUT_S_PER_PIXEL = 13e-9
#: A video without facts: its duration from its bytes at this rate (a 720p H.264 web video)...
UNPROBED_BYTES_PER_S = 150_000.0
#: ...and this many decoded pixels per byte of it (measured 70-370 over H.264, HEVC and VP9)...
UNPROBED_PIXELS_PER_BYTE = 120.0
#: ...at this frame rate, a key frame every this many seconds.
UNPROBED_FPS = 25.0
UNPROBED_GOP_S = 5.0
#: An image: its pixels from its bytes (JPEG at about one bit per pixel).
IMAGE_PIXELS_PER_BYTE = 8.0
#: A file of a frame folder, when nothing else is known about it: a 360p frame.
FOLDER_FRAME_PIXELS = 640 * 360
#: A page rendered from text; a record without media (text and tokens only).
PAGE_S = 0.01
NO_MEDIA_S = 0.001


def planned_frames(seconds: np.ndarray, frames: np.ndarray, sampling: Any) -> np.ndarray:
    """Frames the sampling rule plans for videos of ``seconds`` with ``frames`` frames
    (float arrays); ``sampling``: a SamplingConfig."""
    seconds = np.maximum(np.asarray(seconds, np.float64), 0.0)
    frames = np.maximum(np.asarray(frames, np.float64), 1.0)
    if sampling.frame_rule == "qwen_vl_utils":
        from .sampling import QWEN_FPS_MAX_FRAMES, QWEN_FRAME_FACTOR

        f = QWEN_FRAME_FACTOR
        cap = sampling.max_frames if sampling.max_frames is not None else QWEN_FPS_MAX_FRAMES
        lo = np.ceil(sampling.min_frames / f) * f
        hi = np.floor(np.minimum(cap, frames) / f) * f
        n = np.minimum(np.minimum(np.maximum(seconds * float(sampling.fps or 2.0), lo), hi), frames)
        return np.maximum(np.floor(n / f) * f, 1.0)
    n = frames.copy() if sampling.fps is None else np.maximum(np.floor(seconds * float(sampling.fps) + 0.5), 1.0)
    if sampling.strategy != "none" and sampling.max_frames is not None:
        n = np.minimum(n, float(sampling.max_frames))
    return n


def decoded_frames(frames: np.ndarray, keyframes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Frames a decoder decodes to reach ``targets`` spread over a video: the whole video
    when targets are denser than its key frames, else about half a GOP per target."""
    frames = np.maximum(np.asarray(frames, np.float64), 1.0)
    gop = frames / np.maximum(np.asarray(keyframes, np.float64), 1.0)
    return np.minimum(frames, np.asarray(targets, np.float64) * (gop / 2 + 1))


def output_pixels(pixels: np.ndarray, sampling: Any) -> np.ndarray:
    """Pixels of an output frame after the configured resize (never larger for the bound)."""
    px = np.asarray(pixels, np.float64)
    scale2 = np.ones_like(px)
    short = sampling.resize.short_side
    if short:  # the short side of a 16:9 frame: sqrt(px x 9 / 16)
        scale2 = (short / np.sqrt(np.maximum(px, 1.0) * 9 / 16)) ** 2
    if sampling.resize.max_pixels:
        scale2 = np.minimum(scale2, sampling.resize.max_pixels / np.maximum(px, 1.0))
    return px * scale2


def group_costs(facts: np.ndarray, sampling: Any) -> np.ndarray:
    """Estimated seconds of work per group (float32), ``facts`` a FACTS_DTYPE array."""
    f = facts
    total = np.full(len(f), NO_MEDIA_S, np.float64)
    # probed videos: a group of several is costed as that many videos of their mean length
    probed = np.maximum(f["probed"].astype(np.float64), 1.0)
    has = f["probed"] > 0
    n = planned_frames(f["seconds"] / probed, f["frames"] / probed, sampling) * probed
    decoded = decoded_frames(f["frames"], f["keyframes"], n)
    video = f["probed"] * OPEN_S + decoded * f["pixels"] * DECODE_S_PER_PIXEL \
        + n * output_pixels(f["pixels"], sampling) * OUTPUT_S_PER_PIXEL
    total += np.where(has, video, 0.0)
    # videos without facts: duration, frames and frame size from their bytes
    unprobed = f["videos"].astype(np.float64) - f["probed"]
    secs = f["unprobed_bytes"] / UNPROBED_BYTES_PER_S
    count = np.maximum(secs * UNPROBED_FPS, 1.0)
    px = f["unprobed_bytes"] * UNPROBED_PIXELS_PER_BYTE / count
    n_u = planned_frames(secs / np.maximum(unprobed, 1.0), count / np.maximum(unprobed, 1.0), sampling) \
        * np.maximum(unprobed, 1.0)
    dec_u = decoded_frames(count, np.maximum(secs / UNPROBED_GOP_S, 1.0), n_u)
    guess = unprobed * OPEN_S + dec_u * px * DECODE_S_PER_PIXEL + n_u * output_pixels(px, sampling) * OUTPUT_S_PER_PIXEL
    total += np.where(unprobed > 0, guess, 0.0)
    # images, frame folders (their planned files), pages
    img_px = f["image_bytes"] * IMAGE_PIXELS_PER_BYTE
    total += f["images"] * OPEN_S + img_px * (DECODE_S_PER_PIXEL + OUTPUT_S_PER_PIXEL)
    folder = f["folder_frames"].astype(np.float64)
    if sampling.strategy != "none" and sampling.max_frames is not None:
        folder = np.minimum(folder, float(sampling.max_frames))
    total += folder * (OPEN_S + FOLDER_FRAME_PIXELS * (DECODE_S_PER_PIXEL + OUTPUT_S_PER_PIXEL))
    total += f["pages"] * PAGE_S
    return total.astype(np.float32)


__all__ = ["FACTS_DTYPE", "group_costs", "planned_frames", "decoded_frames", "output_pixels"]
