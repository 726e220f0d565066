"""Per-sample full read: what qwen-vl-utils / LLaVA-style loaders do in a DataLoader worker.

    python benchmarks/per_sample_full_read.py build/bench/epoch.yaml --workers 2 --json

Each sample opens its video with decord (``VideoReader(path, ctx=cpu(0), num_threads=1)``,
one thread per worker as LLaVA does), picks evenly spaced frame indices (as many as
the stream keeps: 1 per second of video, at most ``max_frames``; ``np.linspace(0, n - 1,
k).round()`` as qwen-vl-utils does) and reads them with ``get_batch``. A map-style
dataset over the same records, the same DataLoader settings as ``mmstream bench``.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import MeasuredDataset, main, parser, video_items  # noqa: E402

from mmstream.cli.common import identity  # noqa: E402
from mmstream.benchmark import cpu_seconds, make_result  # noqa: E402


class FullReadDataset(MeasuredDataset):
    """One video per item: decord opens it and reads the evenly spaced indices with get_batch."""

    def setup(self) -> None:
        import decord  # noqa: F401

    def load(self, item) -> dict:
        import decord

        t0 = time.perf_counter()
        vr = decord.VideoReader(item.path, ctx=decord.cpu(0), num_threads=1)
        total, fps = len(vr), vr.get_avg_fps()
        seconds = total / fps if fps else 0.0
        k = max(1, int(round(seconds * (item.sampling.fps or fps))))
        if item.sampling.max_frames:
            k = min(k, item.sampling.max_frames)
        idx = np.linspace(0, total - 1, k).round().astype(int).tolist()
        frames = vr.get_batch(idx).asnumpy()
        del vr
        return {"key": item.key, "frames": frames, "seconds": seconds, "decode_s": time.perf_counter() - t0}


def run(args) -> dict:
    from torch.utils.data import DataLoader

    items = video_items(args.config)
    kwargs = {"prefetch_factor": 2} if args.workers > 0 else {}
    loader = DataLoader(FullReadDataset(items), batch_size=None, num_workers=args.workers, collate_fn=identity,
                        **kwargs)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    first = None
    n = frames = 0
    video_s = 0.0
    stages: Counter = Counter()
    peaks: dict = {}
    starts: dict = {}
    it = iter(loader)
    for r in it:
        first = first if first is not None else time.perf_counter() - t0
        n += 1
        frames += len(r["frames"])
        video_s += r["seconds"]
        stages["decode"] += r["decode_s"]  # decord decodes and converts in one call
        peaks[r["worker"]] = max(peaks.get(r["worker"], 0.0), r["peak"])
        starts.setdefault(r["worker"], r["start"])
    wall = time.perf_counter() - t0
    del it
    return make_result("full_read", args.config, args.workers, wall=wall, first=first, samples=n, frames=frames,
                       video_seconds=video_s, stages=stages, peaks=[peaks[k] for k in sorted(peaks)],
                       starts=[starts[k] for k in sorted(starts)], cpu=cpu_seconds() - cpu0,
                       extra={"decoder": "decord get_batch"})


if __name__ == "__main__":
    sys.exit(main(run, parser(__doc__.split("\n\n")[0]).parse_args()))
