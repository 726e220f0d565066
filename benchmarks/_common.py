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

from mmstream.benchmark import machine_info, median_result, peak_rss_mb, proc_status_mb  # noqa: E402
from mmstream.config import SamplingConfig, load_config  # noqa: E402


class MeasuredDataset:
    """Map-style dataset whose items say which worker made them and its memory.

    A subclass imports its reader in :meth:`setup` (run once per process, before the
    starting RSS is read) and builds an item from ``self.items[i]`` in :meth:`load`;
    every item then gains ``worker``, ``peak`` (peak RSS, MB) and ``start`` (RSS before
    the first item, MB).
    """

    def __init__(self, items):
        self.items = items
        self.start_rss = None

    def __len__(self):
        return len(self.items)

    def setup(self) -> None:
        """Imports the reader needs (counted in the starting RSS)."""

    def load(self, item) -> dict:
        raise NotImplementedError

    def __getitem__(self, i):
        from torch.utils.data import get_worker_info

        self.setup()
        if self.start_rss is None:
            self.start_rss = proc_status_mb("VmRSS")
        out = self.load(self.items[i])
        info = get_worker_info()
        out.update(worker=info.id if info is not None else 0, peak=peak_rss_mb(), start=self.start_rss)
        return out


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
