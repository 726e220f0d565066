"""Records through the stages, inside a worker: media plan -> budget -> decode -> format.

    pipe = Pipeline(config, model)
    outcomes = pipe.process_group(records)   # records sharing their media: decoded once
    sample = pipe.process(record)            # one record; raises SampleError when dropped

A group's media are planned (probed) once and decoded once, for the records the
budget keeps; each record gets its own formatted record and token counts, and they
all share the same clips. A group whose every record is dropped before decoding
costs no decode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from . import timing
from .config import Config, FilterConfig, SourceConfig
from .errors import SampleError
from .media import fit_plan
from .media import split
from .media.supervise import InProcess, Supervised
from .types import Clip, MediaPlan, Record, Sample

log = logging.getLogger(__name__)

Outcome = Union[Sample, SampleError]


class Pipeline:
    def __init__(self, config: Config, model=None):
        self.config = config
        self.model = model
        self.sources = {s.name: s for s in config.sources}
        self.budgets = {s.name: self._budget(s.filter) for s in config.sources}
        self.supervised = Supervised()  # the decode helper of this process, started on first use
        self.in_process = InProcess()
        self.parts: Optional[Parts] = None  # set by an engine that decodes long clips in parts

    def runner(self, sampling, from_text: bool = False):
        """Where a media item is opened and decoded: the supervised helper, unless the
        source turned the limit off (or the item is pages rendered from text: no I/O)."""
        if sampling.decode_timeout is None or from_text:
            return self.in_process
        return self.supervised

    def close(self) -> None:
        """Let this process's decode helper go (a later use starts another)."""
        self.supervised.close()

    def _budget(self, filt: FilterConfig):
        """A budget stage when there is a model or a length rule to apply, else None."""
        if self.model is None and filt == FilterConfig():
            return None
        from .budget import Budget

        return Budget(self.model, filt)

    def process(self, record: Record) -> Sample:
        """One record: its Sample, or raises the SampleError that drops it."""
        outcome = self.process_group([record])[0]
        if isinstance(outcome, SampleError):
            raise outcome
        return outcome

    def plan(self, record: Record, src: SourceConfig) -> list[MediaPlan]:
        plans = []
        for ref in record.media:
            plan = self.runner(src.sampling, ref.text is not None).plan(ref, src.sampling)
            if self.model is not None and plan.kind != "image":
                fit_plan(plan, self.model.frame_count_rule(plan.num_frames))
            if self.model is not None and src.sampling.resize.to_model and plan.num_frames \
                    and plan.path is not None:  # text pages are rendered at their configured size
                size = self.model.input_size(plan.kind, plan.num_frames, plan.width, plan.height)
                if size is not None:
                    plan.width, plan.height = size  # the decoder scales to it (swscale)
            plans.append(plan)
        return plans

    def process_group(self, records: Sequence[Record], group: Optional[str] = None) -> list[Outcome]:
        """Records of one source whose media are the same: one outcome per record, in
        order. ``group`` names the group on its samples (:attr:`Sample.group`)."""
        if not records:
            return []
        outcomes, keep, plans, own, estimates = self._prepare(records)
        if not keep:
            return outcomes  # type: ignore[return-value]
        src = self.sources[records[0].source]
        budget = self.budgets[src.name]
        try:
            clips = self._decode(plans, own, src)
        except SampleError as exc:
            for i in keep:
                outcomes[i] = exc.for_record(records[i].key)
            return outcomes  # type: ignore[return-value]
        if plans:
            timing.count("decoded_records", len(keep))
        for i in keep:
            rec = records[i]
            sample = Sample(key=rec.key, source=rec.source, record=rec, clips=clips[i], group=group)
            if budget is not None:
                try:
                    with timing.stage("budget"):
                        sample = budget.finalize(sample, own[i], estimates[i])
                except SampleError as exc:
                    outcomes[i] = exc.for_record(rec.key)
                    continue
            outcomes[i] = sample
        return outcomes  # type: ignore[return-value]

    def decode_part(self, records: Sequence[Record], part: int, parts: int) -> dict[tuple, Optional[Clip]]:
        """Part ``part`` of ``parts`` of each of the group's clips that is decoded in parts
        (:mod:`mmstream.media.split`), for the worker that decodes the rest and joins
        them; keyed by :func:`~mmstream.media.split.signature`, ``None`` where it failed."""
        if not records:
            return {}
        _, keep, plans, own, _ = self._prepare(records)
        src = self.sources[records[0].source]
        out: dict[tuple, Optional[Clip]] = {}
        for *_, job in (self._jobs(plans, own) if keep else ()):
            if split.splits(job, parts):
                try:
                    out[split.signature(job)] = self._runner_for(job, src).decode(split.part_plan(job, part, parts),
                                                                                  src.sampling)
                except SampleError:
                    out[split.signature(job)] = None  # the joining worker decodes the clip whole
        return out

    def _prepare(self, records: Sequence[Record]):
        """Budget checks, the media plan and each record's estimate: (outcomes so far,
        the records to decode, the plans, each kept record's plans, the estimates)."""
        src = self.sources[records[0].source]
        budget = self.budgets[src.name]
        outcomes: list[Optional[Outcome]] = [None] * len(records)

        def fail(i: int, exc: SampleError) -> None:
            outcomes[i] = exc.for_record(records[i].key)  # one error object per record

        alive = list(range(len(records)))
        if budget is not None:
            with timing.stage("budget"):
                for i in list(alive):
                    try:
                        budget.check_record(records[i])
                    except SampleError as exc:
                        fail(i, exc)
                        alive.remove(i)
        if not alive:
            return outcomes, [], [], {}, {}
        try:
            plans = self.plan(records[alive[0]], src)
        except SampleError as exc:
            for i in alive:
                fail(i, exc)
            return outcomes, [], [], {}, {}
        estimates = {}
        with timing.stage("budget"):
            for i in alive:
                try:
                    estimates[i] = budget.estimate(records[i], plans) if budget is not None else None
                except SampleError as exc:
                    fail(i, exc)
        keep = [i for i in alive if outcomes[i] is None]
        own = {i: (estimates[i].plans if estimates.get(i) is not None and estimates[i].plans else plans) for i in keep}
        return outcomes, keep, plans, own, estimates

    @staticmethod
    def _jobs(plans: list[MediaPlan], own: dict[int, list[MediaPlan]]):
        """Each decode of the group: (medium, the records using it, the positions of its
        frames among the medium's planned frames, the job): each medium
        once per frame size the records need, the union of the frames they keep."""
        for m, base in enumerate(plans):
            wants = {i: p[m] for i, p in own.items()}
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, plan in wants.items():
                by_size.setdefault((plan.width, plan.height), []).append(i)
            for (w, h), users in by_size.items():
                slots = sorted({s for i in users for s in _slots(wants[i])})
                yield m, users, slots, MediaPlan(base.kind, base.path, w, h, [base.indices[s] for s in slots],
                                                 [base.timestamps[s] for s in slots], base.fps, base.info)

    def _runner_for(self, job: MediaPlan, src: SourceConfig):
        return self.runner(src.sampling, job.kind == "pages" and job.path is None)

    def _decode(self, plans: list[MediaPlan], own: dict[int, list[MediaPlan]], src: SourceConfig) -> dict[int, list]:
        """Decode each job of the group (:meth:`_jobs`); each record's clips are those
        frames (the same arrays when a record keeps them all, as records do unless fitted
        to the budget)."""
        clips: dict[int, list] = {i: [] for i in own}
        for m, users, slots, job in self._jobs(plans, own):
            base = plans[m]
            clip = self._decode_job(job, src)
            timing.count("decodes")
            row = {}  # source index -> row of the decoded clip (salvage may have kept fewer)
            for r, idx in enumerate(clip.source_indices.tolist()):
                row.setdefault(idx, r)
            for i in users:
                plan = own[i][m]
                if plan is base or list(_slots(plan)) == slots:
                    if plan is not base and len(clip.source_indices) != plan.num_frames:
                        plan.indices, plan.timestamps = job.indices, job.timestamps
                    if plan is base:
                        base.indices, base.timestamps = job.indices, job.timestamps
                    clips[i].append(clip)
                    continue
                keep = [row[plan_idx] for plan_idx in plan.indices if plan_idx in row]
                plan.indices = [clip.source_indices[r].item() for r in keep]
                plan.timestamps = [float(clip.timestamps[r]) for r in keep]
                clips[i].append(Clip(kind=clip.kind, path=clip.path, frames=clip.frames[keep],
                                     timestamps=clip.timestamps[keep], source_indices=clip.source_indices[keep],
                                     fps=plan.fps))
        return clips

    def _decode_job(self, job: MediaPlan, src: SourceConfig) -> Clip:
        """One job's clip: in parts where :attr:`parts` says so and every part came back
        whole, else decoded here in one piece."""
        runner = self._runner_for(job, src)
        if self.parts is not None and split.splits(job, self.parts.parts):
            clip = self._joined(runner, job, src.sampling, self.parts)
            if clip is not None:
                return clip
        return runner.decode(job, src.sampling)

    @staticmethod
    def _joined(runner, job: MediaPlan, sampling, parts: "Parts") -> Optional[Clip]:
        """The first part decoded here, the others from :attr:`Parts.others`, joined;
        None when a part is missing, failed or short (the caller decodes it whole)."""
        n = parts.parts
        try:
            clips = [runner.decode(split.part_plan(job, 0, n), sampling)]
        except SampleError:
            return None
        clips += [found.get(split.signature(job)) for found in parts.others()]
        short = [k for k in range(n) if k >= len(clips) or not split.complete(clips[k], job, k, n)]
        if short:
            log.info("%s: part(s) %s of %d did not come back whole: decoding the clip here", job.path, short, n)
            return None
        parts.joined += 1
        return split.join_parts(job, clips)


@dataclass
class Parts:
    """The current group's long clips are decoded in ``parts`` parts: this process
    decodes the first, ``others()`` returns what the other workers decoded (one
    :meth:`Pipeline.decode_part` result per part, in order; fetched when first needed)."""

    parts: int
    others: Callable[[], list[dict]]
    joined: int = 0  # clips joined from their parts (the others decoded them whole here)


def _slots(plan: MediaPlan) -> list[int]:
    """Positions of ``plan``'s frames among its group's planned frames."""
    return plan.info.get("slots", list(range(plan.num_frames)))
