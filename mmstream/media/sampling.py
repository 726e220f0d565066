"""Frame-selection rules as pure functions (REFERENCE section 2).

These decide *which* frames a sample gets; nothing here opens a file. Decoders in
:mod:`mmstream.media.backends` then fetch exactly those frames.

>>> fps_sample_indices(list(range(310)), Fraction(1, 25), Fraction(1))[:3]
[12, 37, 62]
>>> t2vid_indices(25, 24) == list(range(24))
True
>>> pai_interval_indices(40, 30000 / 1001)[0][:3]
[0, 14, 28]
"""
from __future__ import annotations

import math
from bisect import bisect_left
from fractions import Fraction
from typing import Optional, Sequence, Union

import numpy as np

Number = Union[int, float, str, Fraction]

#: T2Vid caps real videos at this many frames after 1 fps sampling.
T2VID_MAX_FRAMES = 24


def as_fraction(value: Number) -> Fraction:
    """Exact rational for an fps written as 1, 1.0, "29.97", "30000/1001" or a Fraction.

    Floats go through their shortest repr, so ``2.45`` means 245/100, not the binary
    approximation (which would make a frame go missing at a slot boundary).
    """
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(str(value).strip())


def fps_output_count(duration: Fraction, fps: Fraction) -> int:
    """Number of frames ffmpeg's ``fps`` filter emits: floor(D x F + 1/2)."""
    return math.floor(duration * fps + Fraction(1, 2))


def fps_sample_indices(pts: Sequence[int], time_base: Fraction, fps: Number,
                       last_duration: Optional[int] = None, *, keep_one: bool = True) -> list[int]:
    """ffmpeg ``-vf fps=F`` (round=near) on presentation timestamps.

    ``pts`` are the decoded frames' timestamps in ``time_base`` units, in presentation
    order. Returns, for each output slot k, the index of the latest frame whose time is
    earlier than ``t0 + (k + 1/2) / F``; a slot with no new frame repeats the previous
    frame, as ffmpeg does. The duration is last pts + the last frame's duration - t0,
    where the last frame's duration is the gap between the last two frames unless
    ``last_duration`` is given (needed for a one-frame stream).

    Where ffmpeg emits nothing (a clip shorter than half a slot: 0.4 s at 1 fps),
    ``keep_one`` keeps the first slot's frame instead, so every readable video yields
    at least one frame.
    """
    if not pts:
        return []
    fps = as_fraction(fps)
    time_base = as_fraction(time_base)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    t0 = pts[0]
    if last_duration is None:
        last_duration = pts[-1] - pts[-2] if len(pts) > 1 else 0
    duration = (pts[-1] + last_duration - t0) * time_base
    count = fps_output_count(duration, fps)
    if count == 0 and keep_one:
        count = 1
    # Slot k's threshold in pts units relative to t0: (2k + 1) / (2 F time_base).
    step = 1 / (2 * fps * time_base)
    rel = [p - t0 for p in pts]
    out = []
    for k in range(count):
        i = bisect_left(rel, (2 * k + 1) * step) - 1  # latest frame strictly earlier
        out.append(max(i, 0))
    return out


#: Pai-Megatron-Patch's documented ``build_llava_frame_dataset.py --time-interval 0.5``
#: (the script's own default is 1.0).
PAI_TIME_INTERVAL = 0.5


def pai_interval_step(fps: float, time_interval: float = PAI_TIME_INTERVAL) -> int:
    """Pai's extraction step: ``max(1, int(fps * time_interval))`` in float arithmetic, as
    Pai computes it from OpenCV's ``CAP_PROP_FPS`` (a float). 25 fps gives 12, 29.97 gives 14,
    30 gives 15; a rate under 1 / time_interval gives 1 (every frame)."""
    fps, time_interval = float(fps), float(time_interval)
    if not fps > 0 or math.isinf(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not time_interval > 0:
        raise ValueError(f"time_interval must be > 0, got {time_interval}")
    return max(1, int(fps * time_interval))


def pai_interval_indices(num_frames: int, fps: float,
                         time_interval: float = PAI_TIME_INTERVAL) -> tuple[list[int], float]:
    """Pai-Megatron-Patch's ``build_llava_frame_dataset.py --time-interval``: of the
    ``num_frames`` decoded frames (in order, whatever their timestamps), keep every
    ``step``-th from frame 0 (:func:`pai_interval_step`), the last one only when it falls
    on the step; the rate is ``fps / step``, the float Pai writes to the folder's fps JSON
    (``str`` of it, read back with ``float``: the same number).

    >>> pai_interval_indices(75, 25.0)
    ([0, 12, 24, 36, 48, 60, 72], 2.0833333333333335)
    """
    step = pai_interval_step(fps, time_interval)
    return list(range(0, max(0, num_frames), step)), float(fps) / step


def t2vid_indices(n: int, max_frames: int) -> list[int]:
    """T2Vid's segment-middle downsampling of n frames to at most ``max_frames``.

    With m = min(n, max_frames): all frames when n == m; otherwise seg = (n-1)/m and
    frame i is (round(seg*i) + round(seg*(i+1))) // 2, rounding half to even.
    """
    m = min(n, max_frames)
    if n == m:
        return list(range(n))
    seg = (n - 1) / m
    edges = np.round(seg * np.arange(m + 1)).astype(np.int64)  # numpy rounds half to even
    return ((edges[:-1] + edges[1:]) // 2).tolist()


def uniform_indices(n: int, max_frames: int) -> list[int]:
    """``max_frames`` evenly spaced frames from n, first and last included (qwen-vl-utils style)."""
    m = min(n, max_frames)
    if m == n:
        return list(range(n))
    if m == 1:
        return [0]
    return np.round(np.linspace(0, n - 1, m)).astype(np.int64).tolist()


def cap_indices(indices: Sequence[int], max_frames: Optional[int], strategy: str) -> list[int]:
    """Cap an fps-sampled index list at ``max_frames`` with ``t2vid`` | ``uniform`` | ``none``."""
    indices = list(indices)
    if strategy == "none" or max_frames is None or len(indices) <= max_frames:
        return indices
    if strategy == "t2vid":
        keep = t2vid_indices(len(indices), max_frames)
    elif strategy == "uniform":
        keep = uniform_indices(len(indices), max_frames)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return [indices[i] for i in keep]


def resize_to(width: int, height: int, short_side: Optional[int] = None,
              max_pixels: Optional[int] = None) -> tuple[int, int]:
    """Output size for an optional short-side resize, then a max-pixels bound (never upscales for the bound).

    Sides are rounded to even numbers (what YUV scalers and JPEG encoders like best).
    """
    scale = 1.0
    if short_side:
        scale = short_side / min(width, height)
    if max_pixels and width * height * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    if scale == 1.0:
        return width, height
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


#: qwen-vl-utils' frame-count constants (``vision_process.py``).
QWEN_FRAME_FACTOR = 2
QWEN_FPS_MIN_FRAMES = 4
QWEN_FPS_MAX_FRAMES = 768


def qwen_nframes(total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = QWEN_FPS_MIN_FRAMES,
                 max_frames: Optional[int] = QWEN_FPS_MAX_FRAMES) -> int:
    """qwen-vl-utils' ``smart_nframes`` with ``fps``: total_frames / video_fps * fps, clamped
    to [min_frames, max_frames] and to the frames there are, floored to an even count.
    (qwen-vl-utils raises below 2 frames; this keeps what there is: 1 for a 1-frame video.)"""
    f = QWEN_FRAME_FACTOR
    lo = math.ceil(min_frames / f) * f
    hi = math.floor(min(max_frames if max_frames is not None else QWEN_FPS_MAX_FRAMES, total_frames) / f) * f
    n = total_frames / video_fps * fps
    n = min(min(max(n, lo), hi), total_frames)
    n = math.floor(n / f) * f
    return max(1, min(int(n), total_frames))


def qwen_frame_indices(total_frames: int, nframes: int) -> list[int]:
    """``torch.linspace(0, total_frames - 1, nframes).round()``, as qwen-vl-utils' decord and
    torchcodec readers pick frames (torch's own linspace and round-half-even, so that the
    indices are the very same)."""
    import torch

    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
