"""The length rules as pure functions, and their drop reasons (counter names).

T2Vid (REFERENCE 4) keeps a sample only if it has exactly one ``<video>`` tag, in
the first turn, a first user turn of fewer than N words (split on spaces), at most
``max_frames`` frames and at most ``max_tokens`` text + visual tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..types import VIDEO_TAG, MediaPlan, Record, Turn

VIDEO_TAG_COUNT = "video_tag_count"  # not exactly one <video> tag in the conversation
VIDEO_TAG_NOT_FIRST_TURN = "video_tag_not_first_turn"  # the one <video> tag is not in the first user turn
FIRST_TURN_WORDS = "first_turn_words"  # first user turn has >= max_first_turn_words words
TOO_MANY_FRAMES = "too_many_frames"  # more frames than max_frames (exactly the cap passes)
TOO_MANY_TOKENS = "too_many_tokens"  # text + visual tokens above max_tokens (exactly the cap passes)
ESTIMATE_MISMATCH = "estimate_mismatch"  # decoded clips differ from the plans the budget was computed on

REASONS = (VIDEO_TAG_COUNT, VIDEO_TAG_NOT_FIRST_TURN, FIRST_TURN_WORDS, TOO_MANY_FRAMES, TOO_MANY_TOKENS,
           ESTIMATE_MISMATCH)


def first_user_turn(record: Record) -> Optional[Turn]:
    return next((t for t in record.turns if t.role == "user"), None)


def word_count(text: str) -> int:
    """Words as T2Vid counts them: ``len(text.split(" "))`` (a tag glued to the first
    word by a newline is one word with it)."""
    return len(text.split(" "))


def video_tag_problem(record: Record) -> Optional[str]:
    """The T2Vid tag rule: None when the record has exactly one ``<video>`` tag and it
    is in the first user turn, else the drop reason."""
    total = sum(t.content.count(VIDEO_TAG) for t in record.turns)
    if total != 1:
        return VIDEO_TAG_COUNT
    first = first_user_turn(record)
    if first is None or VIDEO_TAG not in first.content:
        return VIDEO_TAG_NOT_FIRST_TURN
    return None


def plan_frames(plans: Sequence[MediaPlan]) -> int:
    """Frames of a sample: every frame of videos, frame folders and pages; images do not count."""
    return sum(p.num_frames for p in plans if p.kind != "image")
