"""Where an annotation's media path points: a video file, a frame folder or an image,
checked against the media root."""
from __future__ import annotations

import json
import os
import stat
from functools import lru_cache
from dataclasses import dataclass
from typing import Optional

from ..errors import MISSING_MEDIA, NOT_A_FILE, PATH_OUTSIDE_ROOT, SampleError
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
    from .. import storage

    side = folder.rstrip("/" if storage.is_url(folder) else os.sep) + ".json"
    if _kind_of(side) != "file":  # absent, or a FIFO that would block the open
        return None
    try:
        fps = json.loads(storage.read_bytes(side)).get("fps")
    except (OSError, ValueError, AttributeError, SampleError):
        return None
    return str(fps) if fps not in (None, "", 0, "0") else None


def locate(path: str, root: str) -> str:
    """``path`` under ``root`` (a folder or a URL), with the lexical escape check."""
    from .. import storage

    if storage.is_url(root) or storage.is_url(path):
        return storage.join(root if storage.is_url(root) else path, path)
    return inside_root(path, root)


def _kind_of(path: str) -> Optional[str]:
    """``"file"``, ``"dir"``, ``"other"`` (a FIFO, a socket, a device) or None (nothing
    there). One ``stat``: never opens the path, so a FIFO cannot block here. A URL: one
    lookup of the object."""
    from .. import storage

    if storage.is_url(path):
        return storage.kind_of(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SampleError(MISSING_MEDIA, f"cannot stat: {exc.strerror or exc}", path=path) from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


def _not_a_file(path: str) -> SampleError:
    return SampleError(NOT_A_FILE, "exists but is not a regular file or a folder of frames", path=path)


def _frames_stem(full: str, video_exts) -> str:
    """The folder a video's extracted frames go to: its path less a video extension."""
    return os.path.splitext(full)[0] if os.path.splitext(full)[1].lstrip(".") in video_exts else full


def resolve(ref: MediaRef, video_exts=("mp4", "mkv", "webm", "avi", "mov"), prefer_folder: bool = False) -> Resolved:
    """Find the media behind ``ref``.

    A video path may name a file; a name without extension is probed with
    ``video_exts`` (Video-ChatGPT ids); failing that, a folder with the same name less
    its extension is taken as the video's extracted frames, with the fps from the
    sidecar ``<folder>.json`` when there is one. ``prefer_folder``: that folder, when it
    exists, is taken before the file (Pai's converter reads the folder its extraction
    wrote beside the video, never the video). A path that exists but is neither a
    regular file nor a folder (a FIFO, a device) is ``not_a_file``.
    """
    if ref.path is None:
        raise SampleError(MISSING_MEDIA, "media has no path")
    full = locate(ref.path, ref.root or os.getcwd())
    if prefer_folder and ref.kind == "video":
        stem = _frames_stem(full, video_exts)
        if _kind_of(stem) == "dir":
            return Resolved("frames", stem, read_sidecar_fps(stem))
    kind = _kind_of(full)
    if ref.kind == "image":
        if kind == "file":
            return Resolved("image", full)
        if kind is not None:
            raise _not_a_file(full)
        raise SampleError(MISSING_MEDIA, "image not found", path=full)
    if ref.kind in ("frames", "pages"):
        if kind == "dir":
            return Resolved("frames", full, read_sidecar_fps(full))
        if kind is not None:
            raise _not_a_file(full)
        raise SampleError(MISSING_MEDIA, "frame folder not found", path=full)
    if kind == "file":
        return Resolved("video", full)
    if kind == "other":
        raise _not_a_file(full)
    for ext in video_exts:
        candidate = f"{full}.{ext}"
        found = _kind_of(candidate)
        if found == "file":
            return Resolved("video", candidate)
        if found == "other":
            raise _not_a_file(candidate)
    stem = _frames_stem(full, video_exts)
    if _kind_of(stem) == "dir":
        return Resolved("frames", stem, read_sidecar_fps(stem))
    raise SampleError(MISSING_MEDIA, "video not found (no file, no frame folder)", path=full)


def list_frames(folder: str) -> list[str]:
    """The frame files of a folder in name order. Every entry with a frame extension must
    be a regular file (``not_a_file`` otherwise: a FIFO named 00001.jpg would block a reader)."""
    from .. import storage

    if storage.is_url(folder):
        return [u for u in storage.list_dir(folder) if u.lower().endswith(FRAME_EXTS)]
    frames = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.lower().endswith(FRAME_EXTS):
                    continue
                if not entry.is_file():  # follows symlinks; a FIFO, socket or folder is not a frame
                    raise _not_a_file(entry.path)
                frames.append(entry.name)
    except OSError as exc:
        raise SampleError(MISSING_MEDIA, f"cannot list the frame folder: {exc.strerror or exc}",
                          path=folder) from None
    return [os.path.join(folder, n) for n in sorted(frames)]
