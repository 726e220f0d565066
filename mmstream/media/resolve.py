"""Where an annotation's media path points: a video file, a frame folder or an image,
checked against the media root."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from dataclasses import dataclass
from typing import Optional

from ..errors import MISSING_MEDIA, PATH_OUTSIDE_ROOT, SampleError
from ..types import MediaRef

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Resolved:
    kind: str  # "video" (a file), "frames" (a folder), "image"
    path: str
    sidecar_fps: Optional[str] = None  # frame folders: "<folder>.json" {"fps": "2.0"}


def inside_root(path: str, root: str) -> str:
    """Absolute, normalised ``path`` (relative to ``root``), or ``path_outside_root``.

    The check is lexical (``..`` cannot climb out); symlinks inside the root are
    followed wherever they point, as dataset folders of links are common.
    """
    root, prefix = _root(root)
    full = os.path.normpath(os.path.join(root, os.path.expanduser(path) if path[:1] == "~" else path))
    if full != root and not full.startswith(prefix):
        raise SampleError(PATH_OUTSIDE_ROOT, f"{path!r} resolves outside media root {root}", path=full)
    return full


@lru_cache(maxsize=1024)
def _root(root: str) -> tuple[str, str]:
    root = os.path.abspath(root)
    return root, root.rstrip(os.sep) + os.sep


def read_sidecar_fps(folder: str) -> Optional[str]:
    side = folder.rstrip(os.sep) + ".json"
    try:
        with open(side, encoding="utf-8") as f:
            fps = json.load(f).get("fps")
    except (OSError, ValueError, AttributeError):
        return None
    return str(fps) if fps not in (None, "", 0, "0") else None


def resolve(ref: MediaRef, video_exts=("mp4", "mkv", "webm", "avi", "mov")) -> Resolved:
    """Find the media behind ``ref``.

    A video path may name a file; a name without extension is probed with
    ``video_exts`` (Video-ChatGPT ids); failing that, a folder with the same name less
    its extension is taken as the video's extracted frames, with the fps from the
    sidecar ``<folder>.json`` when there is one.
    """
    if ref.path is None:
        raise SampleError(MISSING_MEDIA, "media has no path")
    full = inside_root(ref.path, ref.root or os.getcwd())
    if ref.kind == "image":
        if os.path.isfile(full):
            return Resolved("image", full)
        raise SampleError(MISSING_MEDIA, "image not found", path=full)
    if ref.kind in ("frames", "pages"):
        if os.path.isdir(full):
            return Resolved("frames", full, read_sidecar_fps(full))
        raise SampleError(MISSING_MEDIA, "frame folder not found", path=full)
    if os.path.isfile(full):
        return Resolved("video", full)
    for ext in video_exts:
        candidate = f"{full}.{ext}"
        if os.path.isfile(candidate):
            return Resolved("video", candidate)
    stem = os.path.splitext(full)[0] if os.path.splitext(full)[1].lstrip(".") in video_exts else full
    if os.path.isdir(stem):
        return Resolved("frames", stem, read_sidecar_fps(stem))
    raise SampleError(MISSING_MEDIA, "video not found (no file, no frame folder)", path=full)


def list_frames(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTS))
    return [os.path.join(folder, n) for n in names]
