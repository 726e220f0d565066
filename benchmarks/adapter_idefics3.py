"""The Idefics3 adapter's cost: milliseconds per sample for ``Idefics3Collator`` (the
chat template, the processor's image resize/normalise/split and tokenizing, the labels).

    from benchmarks.adapter_idefics3 import idefics3_cost, stream_samples
    samples = stream_samples("configs/demo.yaml", limit=16)         # decoded once, up front
    idefics3_cost(processor, samples, batch_size=2)                 # {"ms_per_sample": ..., ...}

    python benchmarks/adapter_idefics3.py CONFIG --processor DIR [--limit 16] [--batch-size 2]

``processor`` is a real ``Idefics3Processor`` (``AutoProcessor.from_pretrained(DIR)``);
its ``do_image_splitting`` decides most of the cost. Only the collator is timed: the
frames are decoded before the clock starts, so this is the cost the adapter adds to a
worker on top of the decode cost.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mmstream import StreamingDataset  # noqa: E402
from mmstream.types import Drop  # noqa: E402
from training_adapters.idefics3 import Idefics3Collator  # noqa: E402


def stream_samples(config: Any, limit: int = 16) -> list[Any]:
    """The first ``limit`` kept samples of a config (its model must be ``idefics3``)."""
    out = []
    for sample in StreamingDataset(config):
        if not isinstance(sample, Drop):
            out.append(sample)
        if len(out) >= limit:
            break
    return out


def idefics3_cost(processor: Any, samples: Sequence[Any], *, batch_size: int = 2, repeats: int = 3,
                  **collator_kwargs: Any) -> dict[str, Any]:
    """Median over ``repeats`` of the collator's wall time per sample (after one warm-up
    pass), over ``samples`` (mmstream Samples or Idefics3 examples) in batches."""
    if not samples:
        raise ValueError("no samples to time")
    collate = Idefics3Collator(processor, **collator_kwargs)
    batches = [list(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    tokens = sum(int(collate(b)["attention_mask"].sum()) for b in batches)  # warm-up, and the size
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            collate(b)
        runs.append((time.perf_counter() - start) * 1000 / len(samples))
    return {"ms_per_sample": round(statistics.median(runs), 2), "runs_ms_per_sample": [round(r, 2) for r in runs],
            "samples": len(samples), "batch_size": batch_size, "tokens_per_sample": round(tokens / len(samples), 1),
            "dropped": {k: v for k, v in collate.stats.items() if k != "kept"},
            "do_image_splitting": bool(getattr(processor.image_processor, "do_image_splitting", False))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--processor", required=True, help="a local Idefics3 processor folder")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(args.processor)
    result = idefics3_cost(processor, stream_samples(args.config, args.limit), batch_size=args.batch_size,
                           repeats=args.repeats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
