"""One long clip decoded in parts, by several workers at once (the Ray engine's unit of
work below a decode group), and joined before formatting.

    part = part_plan(job, 1, 3)            # the second third of the job's frames
    clip = join_parts(job, [c0, c1, c2])   # the parts' clips, in order: the whole clip

A part is a contiguous run of the job's planned frames; the decoder seeks to the key
frame before its first target (:func:`mmstream.media.backends.pyav.seek_plan`), so a
part costs its own frames plus at most one group of pictures. Exact decoders return
the same frames for a part as for the whole, so the joined clip equals the whole
clip's decode; a part that failed or came back short (salvaged) is not joined: the
whole clip is then decoded in one piece, as without parts, so the outcome never
depends on the split.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..types import Clip, MediaPlan
from .shared import frames_buffer

#: A clip is split only when each part gets at least this many frames (a part pays for
#: a seek, one group of pictures and moving its frames to the worker that joins them).
MIN_PART_FRAMES = 64


def part_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each of ``parts`` contiguous runs of ``n`` frames, as equal as can be.

    >>> part_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    return [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def splits(job: MediaPlan, parts: int) -> bool:
    """Whether ``job`` is decoded in ``parts`` parts: a video file with enough frames."""
    return parts > 1 and job.kind == "video" and job.path is not None and job.num_frames >= parts * MIN_PART_FRAMES


def part_plan(job: MediaPlan, part: int, parts: int) -> MediaPlan:
    """The plan of part ``part`` of ``parts``: its run of the job's frames."""
    lo, hi = part_bounds(job.num_frames, parts)[part]
    return MediaPlan(job.kind, job.path, job.width, job.height, list(job.indices[lo:hi]),
                     list(job.timestamps[lo:hi]), job.fps, job.info)


def signature(job: MediaPlan) -> tuple:
    """What names a decode job across processes: the same file, size and frames (the
    hash of a tuple of ints is the same in every process)."""
    return job.path, job.width, job.height, job.num_frames, hash(tuple(job.indices))


def complete(clip: Optional[Clip], job: MediaPlan, part: int, parts: int) -> bool:
    """Whether ``clip`` is all of part ``part`` (a salvaged part has fewer frames)."""
    if clip is None or isinstance(clip, BaseException):
        return False
    lo, hi = part_bounds(job.num_frames, parts)[part]
    return clip.num_frames == hi - lo and clip.source_indices.tolist() == list(job.indices[lo:hi])


def join_parts(job: MediaPlan, clips: Sequence[Clip]) -> Clip:
    """The whole clip from its parts' clips (in order), in one new frame buffer."""
    first = clips[0]
    frames = frames_buffer((sum(c.num_frames for c in clips),) + first.frames.shape[1:])
    at = 0
    for c in clips:
        frames[at:at + c.num_frames] = c.frames
        at += c.num_frames
    return Clip(kind=first.kind, path=first.path, frames=frames,
                timestamps=np.concatenate([c.timestamps for c in clips]),
                source_indices=np.concatenate([c.source_indices for c in clips]), fps=first.fps)


__all__ = ["MIN_PART_FRAMES", "part_bounds", "splits", "part_plan", "signature", "complete", "join_parts"]
