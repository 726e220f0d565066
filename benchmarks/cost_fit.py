"""How well decode costs are predicted (issue 21): the cost model (mmstream/media/cost.py)
against the square root of bytes it replaced, on the benchmark set's videos.

    python benchmarks/cost_fit.py build/bench --json
    python benchmarks/cost_fit.py build/bench-quick --repeat 1 --json     # smoke

For each video of the benchmark set and each sampling (T2Vid's capped 1 fps / 24 frames,
and dense: 1 fps, no cap), one record is planned, decoded and JPEG-encoded in this
process (no decode helper, one decoder thread), and its CPU seconds measured (the best
of ``--repeat``: CPU time, so that neighbours on the machine matter less). Then, per
sampling: each cost estimate's correlation with the measured seconds, and the split of
all videos over 2 and 4 workers by :func:`mmstream.stream.split_by_cost` with each
estimate, as the slowest worker's measured seconds over the mean (1.0 is a perfect
split; the lower bound is the longest video over the mean).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLINGS = {"capped": {"fps": 1.0, "max_frames": 24, "strategy": "t2vid"},
             "dense": {"fps": 1.0, "max_frames": None, "strategy": "none", "resize": {"max_pixels": 50176}}}


def measure(path: str, sampling: dict, repeat: int) -> float:
    """CPU seconds to plan, decode and encode one record of ``path``."""
    from mmstream.config import load_config
    from mmstream.models import get_model
    from mmstream.pipeline import Pipeline
    from mmstream.sinks.formats import SampleEncoder
    from mmstream.types import MediaRef, Record, Turn

    cfg = load_config({"sources": [{"name": "s", "format": "llava", "annotations": "x.jsonl", "media_root": "/"}],
                       "sampling": dict(sampling, decode_timeout=None, decoder_threads=1),
                       "model": {"name": "minicpmv-2.5"}, "output": {"format": "minicpmv", "layout": "wds"}})
    pipe, encode = Pipeline(cfg, get_model(cfg.model)), SampleEncoder(cfg.output)
    record = Record(key="s-00000000", source="s", turns=[Turn("user", "<video>\nQ?"), Turn("assistant", "A")],
                    media=[MediaRef("video", path, root="/")])
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        outcome = pipe.process_group([record])[0]
        encode(outcome)
        best = min(best, time.process_time() - t0)
    pipe.close()
    return best


def split_quality(measured, estimate, workers: int) -> float:
    import numpy as np

    from mmstream.stream import split_by_cost

    owner = split_by_cost(np.asarray(estimate, np.float32), workers)
    loads = np.bincount(owner, weights=np.asarray(measured), minlength=workers)
    return round(float(loads.max() / loads.mean()), 3)


def main(argv=None) -> int:
    import numpy as np

    from mmstream.config import load_config
    from mmstream.media.cost import group_costs
    from mmstream.media.facts import media_facts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the benchmark set (benchmarks/make_data.py --out DIR)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=300, help="leave out longer videos (dense takes long)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with open(os.path.join(args.data, "manifest.json")) as f:
        clips = json.load(f)["clips"]
    names = sorted(n for n, c in clips.items() if c["seconds"] <= args.max_seconds)
    out: dict = {"repeat": args.repeat, "videos": names, "command": "python benchmarks/cost_fit.py build/bench --json"}
    for name, sampling in SAMPLINGS.items():
        paths = [os.path.join(os.path.abspath(args.data), "videos", n) for n in names]
        measured = [measure(path, sampling, args.repeat) for path in paths]
        facts = np.concatenate([media_facts((("video", "path", path),)).reshape(1) for path in paths])
        cfg = load_config({"sources": [{"name": "s", "annotations": "x.jsonl"}], "sampling": sampling})
        estimates = {"model": group_costs(facts, cfg.sources[0].sampling).tolist(),
                     "sqrt_bytes": np.sqrt(facts["bytes"]).tolist(), "bytes": facts["bytes"].tolist(),
                     "count": [1.0] * len(paths)}
        m = np.asarray(measured)
        out[name] = {
            "measured_cpu_s": dict(zip(names, [round(x, 3) for x in measured])),
            "model_s": dict(zip(names, [round(x, 3) for x in estimates["model"]])),
            "correlation": {k: round(float(np.corrcoef(m, v)[0, 1]), 3) for k, v in estimates.items() if k != "count"},
            "split_max_over_mean": {f"{w}_workers": {k: split_quality(m, v, w) for k, v in estimates.items()}
                                    for w in (2, 4)},
            "longest_over_mean": {f"{w}_workers": round(float(m.max() / (m.sum() / w)), 3) for w in (2, 4)},
        }
        print(f"{name}: correlation {out[name]['correlation']}, split {out[name]['split_max_over_mean']}",
              file=sys.stderr)
    print(json.dumps(out, indent=1 if args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
