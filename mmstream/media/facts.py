"""What the record index learns about a decode group's media without decoding: file
sizes, and an MP4/MOV's duration, frame and key-frame counts and frame size from its
``moov`` box (:func:`.mp4index.video_facts`: box headers and a few counts, about 70 us
of CPU a file from the page cache, 12 s for 178K videos). :mod:`.cost` turns them into a
decode cost.

    row = media_facts(signature)        # one FACTS_DTYPE row for a group's media

Only local files are read: a URL's facts would cost a request per video at index time,
so remote media are costed from nothing but their kind (and are balanced by count).
"""
from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np

from .cost import FACTS_DTYPE

#: Containers whose index :func:`.mp4index.video_facts` reads.
INDEXED_EXTS = (".mp4", ".mov", ".m4v", ".3gp")


def media_facts(signature: Optional[tuple]) -> np.ndarray:
    """The facts of one group's media (a 0-d FACTS_DTYPE array); ``signature`` is
    :func:`mmstream.sources.index.media_signature`'s ``((kind, how, what), ...)``."""
    row = np.zeros((), FACTS_DTYPE)
    for kind, how, what in signature or ():
        if how == "text":
            row["pages"] += 1
            continue
        try:
            st = os.stat(what)
        except (OSError, ValueError):  # missing (dropped later), or a URL
            if kind == "image":
                row["images"] += 1
            elif kind == "video":
                row["videos"] += 1
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                row["folder_frames"] += len(os.listdir(what))
            except OSError:
                pass
            continue
        row["bytes"] += st.st_size
        if kind == "image":
            row["images"] += 1
            row["image_bytes"] += st.st_size
            continue
        row["videos"] += 1
        facts = _video_facts(what) if what.lower().endswith(INDEXED_EXTS) and stat.S_ISREG(st.st_mode) else None
        if facts is None:
            row["unprobed_bytes"] += st.st_size
            continue
        row["probed"] += 1
        row["seconds"] += facts.seconds
        row["frames"] += facts.frames
        row["keyframes"] += facts.keyframes
        row["pixels"] = max(float(row["pixels"]), float(facts.width * facts.height))
    return row


def _video_facts(path: str):
    from .mp4index import video_facts

    try:
        with open(path, "rb") as f:
            return video_facts(f)
    except OSError:
        return None


__all__ = ["media_facts", "INDEXED_EXTS"]
