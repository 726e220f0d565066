"""The inline length filter: decide from the annotation, then from container
metadata, before any frame is decoded; check the decode against the estimate.

    budget = Budget(model, source.filter)
    budget.check_record(record)                 # tag and word rules
    est = budget.estimate(record, plans)        # frame cap, token cap (from metadata)
    ...decode...
    sample = budget.finalize(sample, plans, est)   # sets sample.model_record, sample.tokens

Each check raises :class:`SampleError` whose ``reason`` is one of :mod:`.rules`.
Knobs (``filter:``, settable per source; upstream defaults in the comments):

- ``max_frames`` (null; T2Vid 90 for MiniCPM-V, 65 for Idefics3): more frames drop.
- ``max_tokens`` (null; T2Vid 8192 MiniCPM-V, 10240 Idefics3): total above it drops.
  ``total`` is ``text + visual`` in ``t2vid`` counting, the templated length in
  ``chat_template`` counting (see :mod:`mmstream.models.base`).
- ``one_video_in_first_turn`` (false; T2Vid true on synthetic data).
- ``max_first_turn_words`` (null; T2Vid 30 for LongQLoRA, 500 for LongAlpaca).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..config import FilterConfig
from ..errors import ConfigError, SampleError
from ..models.base import checked_turns, media_shapes
from ..types import MediaPlan, Record, Sample
from . import rules


@dataclass(frozen=True)
class Estimate:
    """What :meth:`Budget.estimate` worked out before decoding: the training record and
    the token counts (None without a model / tokenizer)."""

    model_record: Optional[dict[str, Any]]
    tokens: Optional[dict[str, int]]


class Budget:
    def __init__(self, model, filter: FilterConfig):
        self.model = model
        self.filter = filter
        for name in ("max_frames", "max_tokens", "max_first_turn_words"):
            value = getattr(filter, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"filter.{name}: must be a positive integer or null (got {value!r})")
        if filter.max_tokens is not None:
            if model is None:
                raise ConfigError("filter.max_tokens needs a model section (its tokenizer and visual tokens)")
            if model.tokenizer_name is None:
                raise ConfigError("filter.max_tokens needs model.tokenizer to count text tokens")

    def check_record(self, record: Record) -> None:
        """Rules on the annotation alone: T2Vid's tag and word rules, then (with a model)
        whether its format can take the conversation, so such records cost no probe."""
        f = self.filter
        if f.one_video_in_first_turn:
            reason = rules.video_tag_problem(record)
            if reason:
                raise SampleError(reason, "T2Vid keeps exactly one <video> tag, in the first turn")
        if f.max_first_turn_words is not None:
            first = rules.first_user_turn(record)
            words = rules.word_count(first.content) if first is not None else 0
            if words >= f.max_first_turn_words:
                raise SampleError(rules.FIRST_TURN_WORDS,
                                  f"first turn has {words} words (limit: fewer than {f.max_first_turn_words})")
        if self.model is not None:
            checked_turns(record)  # no_answer, bad_turn_order, empty_answer, media_tag_mismatch

    def check_plans(self, record: Record, plans: Sequence[MediaPlan]) -> Optional[dict[str, int]]:
        """Frame and token caps from the plans (no decoding). Returns the token counts
        ``{"text", "visual", "total"}``, or None without a model with a tokenizer."""
        return self.estimate(record, plans).tokens

    def estimate(self, record: Record, plans: Sequence[MediaPlan]) -> Estimate:
        """:meth:`check_plans`, keeping the formatted record for :meth:`finalize`."""
        frames = rules.plan_frames(plans)
        if self.filter.max_frames is not None and frames > self.filter.max_frames:
            raise SampleError(rules.TOO_MANY_FRAMES, f"{frames} frames > {self.filter.max_frames}")
        if self.model is None:
            return Estimate(None, None)
        model_record = self.model.format_plans(record, plans)
        tokens = None
        if self.model.tokenizer_name is not None:
            tokens = self.model.count_tokens(record, model_record, media_shapes(plans))
            if self.filter.max_tokens is not None and tokens["total"] > self.filter.max_tokens:
                raise SampleError(rules.TOO_MANY_TOKENS, f"{tokens['total']} tokens > {self.filter.max_tokens} "
                                  f"(text {tokens['text']}, visual {tokens['visual']})")
        return Estimate(model_record, tokens)

    def finalize(self, sample: Sample, plans: Sequence[MediaPlan], estimate: Optional[Estimate] = None) -> Sample:
        """After decoding: the clips must match the plans (count and size of frames),
        else ``estimate_mismatch``; then sets ``sample.model_record`` and ``sample.tokens``
        from ``estimate`` (worked out again when not given)."""
        if len(sample.clips) != len(plans):
            raise SampleError(rules.ESTIMATE_MISMATCH, f"{len(sample.clips)} clips for {len(plans)} plans")
        for i, (clip, plan) in enumerate(zip(sample.clips, plans)):
            if clip.num_frames != plan.num_frames or clip.size != (plan.width, plan.height):
                raise SampleError(rules.ESTIMATE_MISMATCH,
                                  f"media {i}: decoded {clip.num_frames} frames of {clip.size[0]}x{clip.size[1]}, "
                                  f"planned {plan.num_frames} of {plan.width}x{plan.height}",
                                  path=plan.path)
        if self.model is None:
            return sample
        if estimate is None:
            estimate = self.estimate(sample.record, plans)
        sample.model_record = estimate.model_record
        sample.tokens = estimate.tokens
        return sample
