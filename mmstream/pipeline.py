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

from typing import Optional, Sequence, Union

from . import timing
from .config import Config, FilterConfig, SourceConfig
from .errors import SampleError
from .media import fit_plan
from .media.supervise import InProcess, Supervised
from .types import Clip, MediaPlan, Record, Sample

Outcome = Union[Sample, SampleError]


class Pipeline:
    def __init__(self, config: Config, model=None):
        self.config = config
        self.model = model
        self.sources = {s.name: s for s in config.sources}
        self.budgets = {s.name: self._budget(s.filter) for s in config.sources}
        self.supervised = Supervised()  # the decode helper of this process, started on first use
        self.in_process = InProcess()

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
            return outcomes  # type: ignore[return-value]
        try:
            plans = self.plan(records[alive[0]], src)
        except SampleError as exc:
            for i in alive:
                fail(i, exc)
            return outcomes  # type: ignore[return-value]
        estimates = {}
        with timing.stage("budget"):
            for i in alive:
                try:
                    estimates[i] = budget.estimate(records[i], plans) if budget is not None else None
                except SampleError as exc:
                    fail(i, exc)
        keep = [i for i in alive if outcomes[i] is None]
        if not keep:
            return outcomes  # type: ignore[return-value]
        own = {i: (estimates[i].plans if estimates.get(i) is not None and estimates[i].plans else plans) for i in keep}
        try:
            clips = self._decode(plans, own, src)
        except SampleError as exc:
            for i in keep:
                fail(i, exc)
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
                    fail(i, exc)
                    continue
            outcomes[i] = sample
        return outcomes  # type: ignore[return-value]

    def _decode(self, plans: list[MediaPlan], own: dict[int, list[MediaPlan]], src: SourceConfig) -> dict[int, list]:
        """Decode each medium once per frame size the records need, the union of the frames
        they keep; each record's clips are those frames (the same arrays when a record
        keeps them all, as records do unless fitted to the budget)."""
        clips: dict[int, list] = {i: [] for i in own}
        for m, base in enumerate(plans):
            wants = {i: p[m] for i, p in own.items()}
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, plan in wants.items():
                by_size.setdefault((plan.width, plan.height), []).append(i)
            for (w, h), users in by_size.items():
                slots = sorted({s for i in users for s in _slots(wants[i])})
                job = MediaPlan(base.kind, base.path, w, h, [base.indices[s] for s in slots],
                                [base.timestamps[s] for s in slots], base.fps, base.info)
                clip = self.runner(src.sampling, base.kind == "pages" and base.path is None).decode(job, src.sampling)
                timing.count("decodes")
                row = {}  # source index -> row of the decoded clip (salvage may have kept fewer)
                for r, idx in enumerate(clip.source_indices.tolist()):
                    row.setdefault(idx, r)
                for i in users:
                    plan = wants[i]
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


def _slots(plan: MediaPlan) -> list[int]:
    """Positions of ``plan``'s frames among its group's planned frames."""
    return plan.info.get("slots", list(range(plan.num_frames)))
