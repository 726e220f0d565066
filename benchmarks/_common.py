"""What the baseline scripts share: the records of a config, the command line, the output.

Every script prints the fields of :data:`mmstream.benchmark.RESULT_FIELDS` (the same
as ``mmstream bench --json``), built with :func:`mmstream.benchmark.make_result`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mmstream.benchmark import machine_info, median_result  # noqa: E402
from mmstream.config import SamplingConfig, load_config  # noqa: E402


@dataclass
class Item:
    """One kept record's video: what every baseline decodes."""

    key: str
    path: str  # resolved video file
    sampling: SamplingConfig
    turns: list  # the conversation, as (role, content) pairs


def video_items(config, ordered: bool = False) -> list[Item]:
    """The records of ``config`` with exactly one video each (the benchmark set's records;
    others are left out), in source order, or with ``ordered`` in the stream's epoch-0
    order (shuffled as the stream shuffles)."""
    from mmstream.dataset import StreamingDataset
    from mmstream.media.resolve import resolve
    from mmstream.types import Record

    cfg = load_config(config)
    sources = {s.name: s for s in cfg.sources}
    out = []
    ds = StreamingDataset(cfg)
    for rec in (ds.ordered() if ordered else ds.records()):
        if not isinstance(rec, Record) or len(rec.media) != 1 or rec.media[0].kind != "video":
            continue
        sampling = sources[rec.source].sampling
        found = resolve(rec.media[0], tuple(sampling.video_exts))
        if found.kind == "video":
            out.append(Item(rec.key, found.path, sampling, [(t.role, t.content) for t in rec.turns]))
    return out


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("config", help="mmstream YAML config (its records and videos are the data set)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs; the result is the median (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> int:
    runs = [run(args) for _ in range(max(1, args.repeat))]
    result = median_result(runs)
    if args.json:
        json.dump(dict(result, machine=machine_info()), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from mmstream.cli.bench import format_result

        print(format_result(result))
    return 0
