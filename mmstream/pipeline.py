"""One record through the stages, inside a worker: media plan -> budget -> decode -> format.

    pipe = Pipeline(config)
    sample = pipe.process(record)   # raises SampleError with a reason when dropped
"""
from __future__ import annotations


from . import timing
from .config import Config, FilterConfig
from .errors import SampleError
from .media import decode_media, fit_plan, plan_media
from .types import Record, Sample


class Pipeline:
    def __init__(self, config: Config, model=None):
        self.config = config
        self.model = model
        self.sources = {s.name: s for s in config.sources}
        self.budgets = {s.name: self._budget(s.filter) for s in config.sources}

    def _budget(self, filt: FilterConfig):
        """A budget stage when there is a model or a length rule to apply, else None."""
        if self.model is None and filt == FilterConfig():
            return None
        from .budget import Budget

        return Budget(self.model, filt)

    def process(self, record: Record) -> Sample:
        src = self.sources[record.source]
        budget = self.budgets[record.source]
        try:
            if budget is not None:
                with timing.stage("budget"):
                    budget.check_record(record)
            plans = []
            for ref in record.media:
                plan = plan_media(ref, src.sampling)
                if self.model is not None and plan.kind != "image":
                    fit_plan(plan, self.model.frame_count_rule(plan.num_frames))
                plans.append(plan)
            with timing.stage("budget"):
                tokens = budget.check_plans(record, plans) if budget is not None else None
            clips = [decode_media(plan, src.sampling) for plan in plans]
            sample = Sample(key=record.key, source=record.source, record=record, clips=clips)
            if budget is not None:
                with timing.stage("budget"):
                    sample = budget.finalize(sample, plans, tokens)
            return sample
        except SampleError as exc:
            raise exc.with_context(key=record.key)
