"""What the training adapters cost: processor time per sample and the batch rate with and
without them, per model family.

    python benchmarks/adapter_bench.py build/bench/epoch.yaml --workers 2 --json
    python benchmarks/adapter_bench.py build/bench/epoch.yaml --families qwen2.5-vl --samples 8
    python benchmarks/adapter_bench.py build/bench/epoch.yaml --to-model --json   # frames decoded at the model's size

For each family the config's sources and sampling are streamed twice through a
``StatefulDataLoader`` with ``--workers`` workers and ``--batch-size`` samples a batch:
once with a collate that hands the samples over as they are ("without"), once with the
family's adapter as ``collate_fn`` ("with": the processor runs in the workers, its
tensors cross to the training process). Both runs use the family's model in
``chat_template`` mode (so the stream counts what the adapter checks) with the
processor's default pixel limits, and a word-level tokenizer over the annotations with
the family's special tokens (no model hub here; text is a small part of the cost).

Reported per family: samples/s without and with the adapter and their ratio; the
adapter's time per sample in the workers (wall and CPU, ms: the processor's resize,
normalise and patchify, the tokenizer, the count checks, the mRoPE ids and padding) next to
the stream's decode time per sample (the ``decode`` stage) and their ratio.

Families are entries of :data:`FAMILIES`: a function ``(config path, family, work dir,
pixel_dtype) -> (config dict, make_collate(mmstream model))``. Qwen2-VL and Qwen2.5-VL are
here, and Idefics3 as T2Vid trains it (unsplit frames, its collator's rule) with
transformers 5's default image processor (torchvision) and, as ``idefics3-pil``, with the
PIL one T2Vid's transformers 4.46.1 has.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT  # noqa: E402  (puts the repository on sys.path)

from mmstream.benchmark import BenchDataset, cpu_seconds, machine_info  # noqa: E402
from mmstream.config import load_config  # noqa: E402
from mmstream.types import Drop  # noqa: E402


def annotation_texts(cfg: dict, folder: str) -> list[str]:
    """Every string of the config's annotation records (JSON or JSONL), for a vocabulary."""
    from training_adapters.qwen2vl.tiny import words_of

    out: list[str] = []
    for s in cfg["sources"]:
        path = s["annotations"] if os.path.isabs(s["annotations"]) else os.path.join(folder, s["annotations"])
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        out += words_of(records if isinstance(records, list) else [records])
    return out


def raw_config(path: str) -> dict:
    """The YAML as a dict with its paths made absolute (so it can be changed and passed on)."""
    import yaml

    folder = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for s in cfg["sources"]:
        for key in ("annotations", "media_root"):
            if s.get(key) and not os.path.isabs(s[key]) and "://" not in s[key]:
                s[key] = os.path.join(folder, s[key])
    return cfg


def qwen_family(config: str, family: str, work: str, pixel_dtype: Optional[str] = None) -> tuple[dict, Callable]:
    """Qwen2-VL / Qwen2.5-VL: the model in chat_template mode, the processor's defaults."""
    import torch
    from transformers import AutoTokenizer

    from training_adapters.qwen2vl import Qwen2VLCollator, make_processor
    from training_adapters.qwen2vl.tiny import tiny_config, tiny_tokenizer

    cfg = raw_config(config)
    tok_dir = tiny_tokenizer(os.path.join(work, "qwen_tokenizer"), annotation_texts(cfg, os.path.dirname(config)))
    cfg["model"] = {"name": family, "tokenizer": tok_dir, "token_count": "chat_template",
                    "options": {"second_per_grid": "hf"}}
    tok = AutoTokenizer.from_pretrained(tok_dir)

    def make_collate(model) -> Callable:
        return Qwen2VLCollator(make_processor(family, tok), model, tiny_config(family, tok),
                               pixel_dtype=getattr(torch, pixel_dtype) if pixel_dtype else None)

    return cfg, make_collate


def idefics3_family(config: str, family: str, work: str, pixel_dtype: Optional[str] = None) -> tuple[dict, Callable]:
    """Idefics3 as T2Vid trains it: unsplit frames (169 tokens each, 364x364), the
    processor's default sizes, T2Vid's collator rule (``strip_text``). ``idefics3``: the
    image processor transformers 5 gives by default (torchvision); ``idefics3-pil``: the
    PIL one, the only one under transformers 4.46.1, T2Vid's pin (LANCZOS; ~3-4x slower)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import tiny_idefics3  # the tiny tokenizer with Idefics3's special tokens and chat template

    from training_adapters.idefics3 import Idefics3Collator

    cfg = raw_config(config)
    words = sorted({w for t in annotation_texts(cfg, os.path.dirname(config)) for w in t.split()})
    tok_dir = tiny_idefics3.make_tokenizer(os.path.join(work, "idefics3_tokenizer"), tiny_idefics3.WORDS + words)
    cfg["model"] = {"name": "idefics3", "tokenizer": tok_dir, "token_count": "chat_template"}
    processor = tiny_idefics3.make_processor(tok_dir, splitting=False, longest_edge=4 * tiny_idefics3.TILE)
    if family == "idefics3":
        from transformers import Idefics3ImageProcessor

        processor.image_processor = Idefics3ImageProcessor(
            do_image_splitting=False, size={"longest_edge": 4 * tiny_idefics3.TILE},
            max_image_size={"longest_edge": tiny_idefics3.TILE})

    def make_collate(model) -> Callable:
        return Idefics3Collator(processor, emit_drops=True)

    return cfg, make_collate


#: family -> (config path, family, work dir, pixel_dtype) -> (config dict, make_collate(mmstream model))
FAMILIES: dict[str, Callable[..., tuple[dict, Callable]]] = {
    "qwen2-vl": qwen_family,
    "qwen2.5-vl": qwen_family,
    "idefics3": idefics3_family,
    "idefics3-pil": idefics3_family,
}


class TimedCollate:
    """Collate of a bench run: unwraps the dataset's measured items, runs the adapter (or
    not) and reports what it cost in this worker, with the batch (so its tensors cross)."""

    def __init__(self, adapter: Optional[Callable] = None):
        self.adapter = adapter

    def __call__(self, measured: list) -> dict:
        items = [m.item for m in measured]
        stages: Counter = Counter()
        for m in measured:
            stages.update(m.stages)
        samples = [i for i in items if not isinstance(i, Drop)]
        out: dict[str, Any] = {"stages": dict(stages), "frames": sum(m.frames for m in measured),
                               "drops": [i.reason for i in items if isinstance(i, Drop)]}
        if self.adapter is None:
            out.update(samples=len(samples), batch=samples, adapter_s=0.0, adapter_cpu_s=0.0)
            return out
        t0, c0 = time.perf_counter(), time.process_time()
        batch = (self.adapter(samples) if samples else None) or {}
        out.update(adapter_s=time.perf_counter() - t0, adapter_cpu_s=time.process_time() - c0,
                   samples=len(batch.get("input_ids", [])), batch=batch)
        # Qwen's collator lists drops as dicts, Idefics3's as Drop records
        out["drops"] += [d.reason for d in batch.get("dropped", [])]
        return out


def run(cfg: dict, collate: TimedCollate, workers: int, batch_size: int, samples: Optional[int]) -> dict:
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = BenchDataset(load_config(cfg), emit_drops=True)
    loader = StatefulDataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    kept = frames = 0
    adapter_s = adapter_cpu = 0.0
    stages: Counter = Counter()
    drops: Counter = Counter()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    it = iter(loader)
    try:
        for out in it:
            kept += out["samples"]
            frames += out["frames"]
            stages.update(out["stages"])
            drops.update(out["drops"])
            adapter_s += out["adapter_s"]
            adapter_cpu += out["adapter_cpu_s"]
            if samples is not None and kept >= samples:
                break
        wall = time.perf_counter() - t0
    finally:
        del it
    return {"samples": kept, "frames": frames, "wall_s": round(wall, 3), "samples_per_s": round(kept / wall, 4),
            "cpu_s": round(cpu_seconds() - cpu0, 2), "stages_s": {k: round(v, 3) for k, v in sorted(stages.items())},
            "dropped": dict(drops), "adapter_s": round(adapter_s, 3), "adapter_cpu_s": round(adapter_cpu, 3)}


def bench_family(config: str, family: str, args: argparse.Namespace, work: str) -> dict:
    """``--repeat`` rounds of (without, with), interleaved; medians with every run."""
    cfg, make_collate = FAMILIES[family](config, family, work, args.pixel_dtype)
    if args.to_model:
        cfg.setdefault("sampling", {}).setdefault("resize", {})["to_model"] = True
    from mmstream.models import get_model

    model = get_model(load_config(cfg).model)
    rounds = []
    for _ in range(args.repeat):
        without = run(cfg, TimedCollate(), args.workers, args.batch_size, args.samples)
        with_ = run(cfg, TimedCollate(make_collate(model)), args.workers, args.batch_size, args.samples)
        n = max(with_["samples"], 1)
        decode_ms = 1000 * without["stages_s"].get("decode", 0.0) / max(without["samples"], 1)
        adapter_ms = 1000 * with_["adapter_s"] / n
        rounds.append({"without": without, "with": with_,
                       "rate_ratio": with_["samples_per_s"] / max(without["samples_per_s"], 1e-9),
                       "adapter_ms_per_sample": adapter_ms,
                       "adapter_cpu_ms_per_sample": 1000 * with_["adapter_cpu_s"] / n,
                       "decode_ms_per_sample": decode_ms,
                       "adapter_vs_decode": adapter_ms / decode_ms if decode_ms else None})

    def med(key, part=None):
        vals = [r[part][key] if part else r[key] for r in rounds]
        if any(v is None for v in vals):
            return None, vals
        return round(statistics.median(vals), 3), [round(v, 3) for v in vals]

    out = {"family": family, "workers": args.workers, "batch_size": args.batch_size, "pixel_dtype": args.pixel_dtype,
           "to_model": bool(args.to_model), "repeat": args.repeat,
           "without": rounds[len(rounds) // 2]["without"], "with": rounds[len(rounds) // 2]["with"]}
    for key in ("rate_ratio", "adapter_ms_per_sample", "adapter_cpu_ms_per_sample", "decode_ms_per_sample",
                "adapter_vs_decode"):
        out[key], out[key + "_runs"] = med(key)
    for part in ("without", "with"):
        out[part + "_samples_per_s"], out[part + "_samples_per_s_runs"] = med("samples_per_s", part)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmstream YAML config (the epoch set: build/bench/epoch.yaml)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {sorted(FAMILIES)}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--samples", type=int, default=None, help="stop each run after this many samples")
    p.add_argument("--pixel-dtype", default=None, choices=["bfloat16", "float16"],
                   help="cast pixel values in the workers (default: the processor's float32)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of (without, with), interleaved; medians (default 3)")
    p.add_argument("--to-model", action="store_true",
                   help="sampling.resize.to_model: decode straight to the model's input size")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        p.error(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    with tempfile.TemporaryDirectory(prefix="adapter_bench") as work:
        results = [bench_family(os.path.abspath(args.config), f, args, work) for f in families]
    report = {"config": args.config, "results": results, "machine": machine_info()}
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for r in results:
        a = r["with"]
        print(f"{r['family']}: {r['without_samples_per_s']:.3f} samples/s without the adapter, "
              f"{r['with_samples_per_s']:.3f} with ({r['rate_ratio']:.2f}x; {r['workers']} workers, batch "
              f"{r['batch_size']}; medians of {r['repeat']}); adapter "
              f"{r['adapter_ms_per_sample']:.1f} ms/sample ({r['adapter_cpu_ms_per_sample']:.1f} ms CPU) vs decode "
              f"{r['decode_ms_per_sample']:.1f} ms/sample = {r['adapter_vs_decode']}; dropped {a['dropped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
