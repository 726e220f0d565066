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
from ..media.sampling import uniform_indices
from . import rules


OVER_BUDGET = ("drop", "fewer_frames", "smaller_frames")
#: Media kinds fitting may shrink: real video frames (never text pages, whose frames are the text).
FIT_KINDS = ("video", "frames")


@dataclass(frozen=True)
class Estimate:
    """What :meth:`Budget.estimate` worked out before decoding: the training record, the
    token counts (None without a model / tokenizer) and, when the sample was fitted to
    the budget, its own plans and what was reduced."""

    model_record: Optional[dict[str, Any]]
    tokens: Optional[dict[str, int]]
    plans: Optional[list[MediaPlan]] = None  # fitted plans (None: the group's plans as they are)
    fitted: Optional[dict[str, Any]] = None  # {"rule", "media": [{"frames": [from, to], "size": [...]}]}


def fewer_frames(plan: MediaPlan, count: int) -> MediaPlan:
    """``plan`` with at most ``count`` of its frames, spread evenly over them (first and
    last kept), so the sampling rule's even spacing stays even; its rate scales with them."""
    if plan.kind not in FIT_KINDS or plan.num_frames <= count:
        return plan
    slots = uniform_indices(plan.num_frames, count)
    base = plan.info.get("slots", list(range(plan.num_frames)))
    fps = plan.fps * count / plan.num_frames if plan.fps else plan.fps
    return MediaPlan(plan.kind, plan.path, plan.width, plan.height, [plan.indices[s] for s in slots],
                     [plan.timestamps[s] for s in slots], fps, dict(plan.info, slots=[base[s] for s in slots]))


def smaller_frames(plan: MediaPlan, long_side: int) -> MediaPlan:
    """``plan`` with its frames scaled so the long side is ``long_side`` (aspect kept,
    sides even): the decoder scales to it."""
    if plan.kind not in FIT_KINDS:
        return plan
    scale = long_side / max(plan.width, plan.height)
    w = max(2, int(round(plan.width * scale / 2)) * 2)
    h = max(2, int(round(plan.height * scale / 2)) * 2)
    return MediaPlan(plan.kind, plan.path, w, h, list(plan.indices), list(plan.timestamps), plan.fps, dict(plan.info))


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
        est = self._count(record, plans)
        if not self._over(est):
            return est
        if self.filter.over_budget != "drop":
            fitted = self._fit(record, plans)
            if fitted is not None:
                return fitted
        tokens = est.tokens
        raise SampleError(rules.TOO_MANY_TOKENS, f"{tokens['total']} tokens > {self.filter.max_tokens} "
                          f"(text {tokens['text']}, visual {tokens['visual']})"
                          + ("" if self.filter.over_budget == "drop" else
                             f"; no {self.filter.over_budget.replace('_', ' ')} fit"))

    def _count(self, record: Record, plans: Sequence[MediaPlan]) -> Estimate:
        model_record = self.model.format_plans(record, plans)
        tokens = None
        if self.model.tokenizer_name is not None:
            tokens = self.model.count_tokens(record, model_record, media_shapes(plans))
        return Estimate(model_record, tokens)

    def _over(self, est: Estimate) -> bool:
        return (self.filter.max_tokens is not None and est.tokens is not None
                and est.tokens["total"] > self.filter.max_tokens)

    def candidates(self, plans: Sequence[MediaPlan]):
        """The reductions ``over_budget`` may choose, largest first: (plans, what changed)."""
        video = [p for p in plans if p.kind in FIT_KINDS]
        if not video:
            return
        if self.filter.over_budget == "fewer_frames":
            for k in range(max(p.num_frames for p in video) - 1, 0, -1):
                cand = [fewer_frames(p, k) for p in plans]
                if all(self.model.frame_count_rule(c.num_frames) == c.num_frames for c in cand if c.kind in FIT_KINDS):
                    yield cand
        else:
            step = getattr(self.model, "resize_step", 28)
            longest = max(max(p.width, p.height) for p in video)
            for long_side in range(longest - step, step - 1, -step):
                cand = [smaller_frames(p, min(long_side, max(p.width, p.height))) for p in plans]
                if min(min(c.width, c.height) for c in cand if c.kind in FIT_KINDS) < 2:
                    return
                yield cand

    def _fit(self, record: Record, plans: Sequence[MediaPlan]) -> Optional[Estimate]:
        """The largest reduction that fits ``max_tokens`` (exact counts, before decoding)."""
        for cand in self.candidates(plans):
            est = self._count(record, cand)
            if not self._over(est):
                media = [{"frames": [p.num_frames, c.num_frames], "size": [p.width, p.height, c.width, c.height]}
                         for p, c in zip(plans, cand)]
                return Estimate(est.model_record, est.tokens, list(cand),
                                {"rule": self.filter.over_budget, "media": media,
                                 "tokens": [self._count(record, plans).tokens["total"], est.tokens["total"]]})
        return None

    def finalize(self, sample: Sample, plans: Sequence[MediaPlan], estimate: Optional[Estimate] = None) -> Sample:
        """After decoding: the clips must match the plans (count and size of frames),
        else ``estimate_mismatch``; then sets ``sample.model_record`` and ``sample.tokens``
        from ``estimate`` (worked out again when not given)."""
        if estimate is not None and estimate.plans is not None:
            plans = estimate.plans
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
        sample.fitted = estimate.fitted
        return sample
