"""Media stage: plan which frames a media item gives (metadata only), then decode them.

    plan = plan_media(ref, sampling)        # probe: frame count, size, timestamps
    clip = decode_media(plan, sampling)     # uint8 RGB [T, H, W, 3] + timestamps

Planning first lets the budget stage drop a sample before paying for its decode.
"""
from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from typing import Iterator, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .. import storage, timing
from ..config import SamplingConfig
from ..errors import DECODE_ERROR, NO_FRAMES, TOO_LARGE, SampleError
from ..types import Clip, MediaPlan, MediaRef
from .backends import get_backend, resolve_threads
from .bounds import check_pixels
from .images import to_rgb8
from .probe import probe_video
from .resolve import list_frames, resolve
from .sampling import (as_fraction, cap_indices, fps_sample_indices, pai_interval_indices, qwen_frame_indices,
                       qwen_nframes, resize_to)
from .shared import frames_buffer

__all__ = ["plan_media", "decode_media", "fit_plan"]


def _out_size(width: int, height: int, sampling: SamplingConfig) -> tuple[int, int]:
    return resize_to(width, height, sampling.resize.short_side, sampling.resize.max_pixels)


def plan_media(ref: MediaRef, sampling: SamplingConfig) -> MediaPlan:
    """Decide the frames of one media item from its metadata (no pixel decoded)."""
    with timing.stage("probe"), storage.using(sampling.storage):
        return _plan_media(ref, sampling)


def _plan_media(ref: MediaRef, sampling: SamplingConfig) -> MediaPlan:
    if ref.kind == "pages" and ref.text is not None:
        from .pages import plan_pages  # T2Vid raw synthetic: pages rendered from text

        return plan_pages(ref.text, sampling.pages)
    found = resolve(ref, tuple(sampling.video_exts), prefer_folder=sampling.frame_folders == "as_extracted")
    try:
        if found.kind == "image":
            return _plan_image(found.path, sampling)
        if found.kind == "frames":
            return _plan_folder(found.path, found.sidecar_fps, sampling, pages=ref.kind == "pages")
        return _plan_video(found.path, sampling)
    except SampleError as exc:
        raise exc.with_context(path=found.path)


@contextmanager
def _open_image(path: str, limit: Optional[int], what: str = "image") -> Iterator[Image.Image]:
    """PIL's image at ``path``, its size checked against the source pixel limit from the
    header (PIL reads no pixels at open); what PIL raises, at open or while the body
    decodes, becomes a :class:`SampleError` (``too_large`` over PIL's own bound,
    ``decode_error`` otherwise)."""
    try:
        with storage.open_media(path) as src, Image.open(src) as im:
            check_pixels(im.width, im.height, limit, path, what)
            yield im
    except Image.DecompressionBombError as exc:  # over PIL's own bound, refused at open
        raise SampleError(TOO_LARGE, f"{what}: {exc}", path=path) from None
    except (OSError, ValueError) as exc:
        raise SampleError(DECODE_ERROR, f"cannot read {what}: {exc}", path=path) from None


def _image_size(path: str, limit: Optional[int], what: str = "image", upright: bool = True) -> tuple[int, int]:
    """An image's size (``upright``: as its EXIF orientation turns it), from its header."""
    with _open_image(path, limit, what) as im:
        width, height = im.size
        if upright and im.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS:
            width, height = height, width
    return width, height


#: EXIF orientations that turn the picture a quarter (what ImageOps.exif_transpose swaps)
_QUARTER_TURNS = (5, 6, 7, 8)


def _plan_image(path: str, sampling: SamplingConfig) -> MediaPlan:
    width, height = _image_size(path, sampling.max_source_pixels)
    w, h = _out_size(width, height, sampling)
    return MediaPlan("image", path, w, h, [0], [0.0], None, {"source_size": (width, height)})


def _select(pts: list[int], time_base: Fraction, last: Optional[int], sampling: SamplingConfig,
            cap: bool = True, source_rate: Optional[float] = None) -> tuple[list[int], Optional[float]]:
    """Frame positions and the rate they stand for: the sampling rate, or, when frames
    are taken as they are (``fps: null``), the source's own rate when it is known."""
    if sampling.fps is None:
        indices = list(range(len(pts)))
    else:
        indices = fps_sample_indices(pts, time_base, sampling.fps, last)
    if cap:
        indices = cap_indices(indices, sampling.max_frames, sampling.strategy)
    return indices, (float(sampling.fps) if sampling.fps is not None else source_rate)


def _select_qwen(info, sampling: SamplingConfig) -> tuple[list[int], float]:
    """qwen-vl-utils' frames: its frame count, spread over every frame; the sampling rate it
    reports (nframes / total x video fps) is the plan's fps."""
    total = info.num_frames
    video_fps = info.average_rate or (total / info.duration_seconds if info.duration_seconds else 1.0)
    n = qwen_nframes(total, video_fps, float(sampling.fps or 2.0), sampling.min_frames, sampling.max_frames)
    return qwen_frame_indices(total, n), n / total * video_fps


def _select_pai(num_frames: int, fps: Optional[float], sampling: SamplingConfig,
                path: str) -> tuple[list[int], float]:
    """Pai's extraction (``frame_rule: pai_interval``): every int(fps x time_interval)-th
    frame from frame 0, at fps / that step; a source that states no rate is a ``decode_error``
    (Pai's OpenCV would step by its time base and its converter divide by zero)."""
    if not fps or fps <= 0:
        raise SampleError(DECODE_ERROR, "the video states no frame rate (pai_interval steps by it)", path=path)
    return pai_interval_indices(num_frames, fps, sampling.time_interval)


def _plan_video(path: str, sampling: SamplingConfig) -> MediaPlan:
    info = probe_video(path, max_pixels=sampling.max_source_pixels)
    if sampling.frame_rule == "qwen_vl_utils":
        indices, fps = _select_qwen(info, sampling)
    elif sampling.frame_rule == "pai_interval":
        indices, fps = _select_pai(info.num_frames, info.average_rate, sampling, path)
    else:
        indices, fps = _select(info.pts, info.time_base, info.last_duration, sampling,
                               source_rate=info.average_rate)
    w, h = _out_size(info.width, info.height, sampling)
    return MediaPlan("video", path, w, h, indices, [info.seconds(i) for i in indices], fps,
                     {"probe": info, "source_size": (info.width, info.height)})


def _plan_folder(folder: str, sidecar_fps: Optional[str], sampling: SamplingConfig,
                 pages: bool = False) -> MediaPlan:
    files = list_frames(folder)
    if not files:
        raise SampleError(NO_FRAMES, "frame folder holds no images", path=folder)
    width, height = _image_size(files[0], sampling.max_source_pixels, "frame", upright=False)
    src_fps = sidecar_fps or (sampling.frame_folder_fps and str(sampling.frame_folder_fps))
    rate = _folder_rate(src_fps, folder) if src_fps else None
    if pages or rate is None or sampling.frame_folders == "as_extracted":
        # Text pages, frames of an unknown rate (capped), or every frame as extracted (not capped).
        indices = list(range(len(files)))
        if not pages and sampling.frame_folders != "as_extracted":
            indices = cap_indices(indices, sampling.max_frames, sampling.strategy)
        stamps = [float(i / rate) if rate else float(i) for i in indices]
        fps = float(rate) if rate else None
    else:
        if sampling.frame_rule == "pai_interval":  # as Pai would extract a video of that rate
            indices, fps = _select_pai(len(files), float(rate), sampling, folder)
        else:
            indices, fps = _select(list(range(len(files))), 1 / rate, 1, sampling, source_rate=float(rate))
        stamps = [float(i / rate) for i in indices]
    w, h = _out_size(width, height, sampling)
    return MediaPlan("pages" if pages else "frames", folder, w, h, indices, stamps, fps,
                     {"files": files, "source_size": (width, height)})


def _folder_rate(text: str, folder: str) -> Fraction:
    """A frame folder's rate from its sidecar text (``"2.0833333333333335"``, ``"30000/1001"``);
    one that is not a positive number is a ``decode_error`` of the folder."""
    try:
        rate = as_fraction(text)
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if rate <= 0:
        raise SampleError(DECODE_ERROR, f"frame folder fps sidecar says {text!r}", path=folder)
    return rate


def fit_plan(plan: MediaPlan, count: int) -> MediaPlan:
    """Keep the first ``count`` planned frames, or repeat the last one up to ``count``
    (a model's frame-count rule, e.g. an even count per video for Qwen2-VL)."""
    if count <= plan.num_frames:
        plan.indices = plan.indices[:count]
        plan.timestamps = plan.timestamps[:count]
    elif plan.indices:
        extra = count - plan.num_frames
        plan.indices = plan.indices + [plan.indices[-1]] * extra
        plan.timestamps = plan.timestamps + [plan.timestamps[-1]] * extra
    return plan


def _load_image(path: str, size: tuple[int, int], limit: Optional[int]) -> np.ndarray:
    try:
        with _open_image(path, limit) as im:
            rgb = to_rgb8(ImageOps.exif_transpose(im))
    except SampleError as exc:
        raise exc.with_context(path=path)
    if (rgb.shape[1], rgb.shape[0]) != size:
        rgb = np.array(Image.fromarray(rgb).resize(size, Image.BICUBIC), dtype=np.uint8)
    return rgb  # writable (np.asarray of a PIL image is read-only)


def _clip_rows(indices: list[int], shape: tuple[int, int, int], out: Optional[np.ndarray] = None):
    """The clip's array (``out``'s first rows when given, else :func:`frames_buffer`: shared
    memory in a DataLoader worker, so it reaches the training process without a copy) and,
    per source position, the row its frame is decoded into (its first use)."""
    frames = out[:len(indices)] if out is not None else frames_buffer((len(indices),) + shape)
    first: dict[int, int] = {}
    for k, i in enumerate(indices):
        first.setdefault(i, k)
    return frames, {i: frames[k] for i, k in first.items()}, first


def _fill_repeats(frames: np.ndarray, indices: list[int], first: dict[int, int]) -> None:
    """Rows that repeat an earlier frame (the fps rule's repeated slots, a fitted plan's
    padding) copied from that frame's row."""
    for k, i in enumerate(indices):
        if first[i] != k:
            frames[k] = frames[first[i]]


def decode_media(plan: MediaPlan, sampling: SamplingConfig, out: Optional[np.ndarray] = None) -> Clip:
    """Decode exactly the planned frames (into ``out``, ``[T, H, W, 3]`` uint8, when given)."""
    with timing.stage("decode"), storage.using(sampling.storage):
        clip = _decode_media(plan, sampling, out)
    if out is not None and not np.may_share_memory(clip.frames, out):
        n = clip.num_frames
        out[:n] = clip.frames
        clip.frames = out[:n]
    return clip


def _decode_media(plan: MediaPlan, sampling: SamplingConfig, out: Optional[np.ndarray] = None) -> Clip:
    size = (plan.width, plan.height)
    if plan.kind == "pages" and plan.path is None:
        from .pages import render_plan

        frames = render_plan(plan, sampling.pages)
    elif plan.kind == "image":
        frames = _load_image(plan.path, size, sampling.max_source_pixels)[None]
    elif plan.kind in ("frames", "pages"):
        files = plan.info["files"]
        frames, rows, first = _clip_rows(plan.indices, (size[1], size[0], 3), out)
        for i, row in rows.items():
            row[...] = _load_image(files[i], size, sampling.max_source_pixels)
        _fill_repeats(frames, plan.indices, first)
    else:
        info = plan.info["probe"]
        positions = sorted(set(plan.indices))
        backend = get_backend(sampling.decoder)
        threads = resolve_threads(sampling.decoder_threads)
        frames, rows, first = _clip_rows(plan.indices, (size[1], size[0], 3), out)
        got = backend.read_into(plan.path, info, positions, size, rows, threads, sampling.salvage)
        if len(got) < len(positions):  # salvaged: the frames before the damage, moved up
            kept = [i for i in plan.indices if i in got]
            if not kept:
                raise SampleError(NO_FRAMES, "no decodable frame", path=plan.path)
            compact = frames_buffer((len(kept),) + frames.shape[1:])
            compact[:] = frames[[first[i] for i in kept]]
            frames = compact
            plan.indices = kept
            plan.timestamps = [info.seconds(i) for i in plan.indices]
        else:
            _fill_repeats(frames, plan.indices, first)
        timing.count("video_seconds", info.duration_seconds)
    return Clip(kind=plan.kind, path=plan.path, frames=frames,
                timestamps=np.asarray(plan.timestamps, dtype=np.float64),
                source_indices=np.asarray(plan.indices, dtype=np.int64), fps=plan.fps)
