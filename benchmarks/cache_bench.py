"""``mmstream cache`` before and after a change to the shard layer (issue 26), medians.

    python benchmarks/cache_bench.py build/bench --tree before=/path/to/old/checkout \\
        --tree after=. --repeat 3 --json

Each ``--tree NAME=PATH`` is a checkout of mmstream, run with ``PYTHONPATH=PATH`` (the
same Python and packages for all). Per repeat, interleaved over the trees:

* ``cache``: ``mmstream cache`` of the epoch set (``benchmarks/make_data.py``) to the
  MiniCPM-V ``wds`` shards, ``--workers 2``: wall seconds of the whole command;
* ``writer``: the shard writer alone, ``--writer-samples`` synthetic samples of 24
  JPEG-sized members each through ``ShardWriter`` (write, hash, fsync, rename): the
  part of a cache run the shard layer owns, without the decoding that dominates it.

Medians of ``--repeat`` runs and the ratio of every tree to the first; the writer's
shards must hash the same in every tree (the same bytes). ``--writer-only`` skips the
cache runs (no benchmark set needed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable

CACHE_CFG = """\
sources:
  - {{name: epoch, format: llava, annotations: {ann}, media_root: {root}}}
sampling: {{fps: 1.0, max_frames: 24, strategy: t2vid}}
filter: {{one_video_in_first_turn: true}}
model: {{name: minicpmv-2.5}}
output: {{format: minicpmv, layout: wds, maxcount: 100}}
"""

# the shard writer alone, in a tree: prints {"seconds", "sha256": [...], "bytes"}
WRITER = """
import hashlib, json, os, sys, time
import torch, webdataset  # loaded in every cache run (the DataLoader): not part of the writer's time
from mmstream.sinks import ShardWriter
from mmstream.sinks.formats import Encoded
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
pool = hashlib.sha256(b"cache_bench").digest() * (1 << 16)  # 2 MB, the same in every tree
pool = bytes(b ^ (i * 31 & 255) for i, b in enumerate(pool))
size = 60 * 1024
t0 = time.perf_counter()
with ShardWriter(out, lambda i: f"minicpmv-{i:06d}.tar", maxcount=100) as w:
    for i in range(n):
        members = [(f"{j:05d}.jpg", pool[(i * 24 + j) * 4099 % (len(pool) - size):][:size]) for j in range(24)]
        w.write(Encoded(key=f"bench-{i:08d}", members=members + [("json", json.dumps({"id": i}).encode())]))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "sha256": [c.sha256 for c in w.committed],
                  "bytes": sum(c.bytes for c in w.committed)}))
"""


def run(tree: str, cmd: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=tree)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"cache_bench: failed in {tree}: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0, res.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", help="the benchmark set (benchmarks/make_data.py --out DIR)")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                   help="a checkout to measure (repeat; default: this one, as 'this')")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--writer-samples", type=int, default=400)
    p.add_argument("--writer-only", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": ROOT}
    trees = {k: os.path.abspath(v) for k, v in trees.items()}
    if not args.writer_only and not args.data:
        p.error("the benchmark set DATA is needed (or --writer-only)")
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="cache-bench-", dir=os.path.join(ROOT, "build"))
    runs: dict[str, dict[str, list[float]]] = {t: {"cache": [], "writer": []} for t in trees}
    rates: dict[str, list[float]] = {t: [] for t in trees}
    shas: dict[str, list[str]] = {}
    try:
        cfg = os.path.join(work, "epoch_cache.yaml")
        if not args.writer_only:
            data = os.path.abspath(args.data)
            with open(cfg, "w") as f:
                f.write(CACHE_CFG.format(ann=os.path.join(data, "annotations", "epoch.jsonl"), root=data))
        for i in range(args.repeat):
            for name, tree in trees.items():
                out = os.path.join(work, f"{name}-{i}")
                _, stdout = run(tree, [PY, "-c", WRITER, out + "-w", str(args.writer_samples)])
                got = json.loads(stdout)
                runs[name]["writer"].append(round(got["seconds"], 3))
                shas[name] = got["sha256"]
                shutil.rmtree(out + "-w", ignore_errors=True)
                if not args.writer_only:
                    seconds, _ = run(tree, [PY, "-m", "mmstream.cli", "cache", cfg, "--output", out,
                                            "--workers", str(args.workers), "--no-progress"])
                    runs[name]["cache"].append(round(seconds, 2))
                    with open(os.path.join(out, "manifest.json")) as f:
                        rates[name].append(json.load(f)["counts"]["kept"] / seconds)
                    shutil.rmtree(out, ignore_errors=True)
                print(f"{name} #{i}: writer {runs[name]['writer'][-1]} s"
                      + ("" if args.writer_only else f", cache {runs[name]['cache'][-1]} s"), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {t: {k: statistics.median(v) if v else None for k, v in r.items()} for t, r in runs.items()}
    first = next(iter(trees))
    ratio = {t: {k: round(med[first][k] / m[k], 3) if m[k] and med[first][k] else None for k in m}
             for t, m in med.items()}  # > 1: faster than the first tree
    result = {"trees": trees, "repeat": args.repeat, "workers": args.workers, "writer_samples": args.writer_samples,
              "runs_s": runs, "median_s": med, "speed_vs_" + first: ratio,
              "samples_per_s": {t: round(statistics.median(v), 3) if v else None for t, v in rates.items()},
              "same_shard_bytes": len({tuple(v) for v in shas.values()}) == 1,
              "command": "python benchmarks/cache_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for t in trees:
            print(f"{t}: writer {med[t]['writer']} s, cache {med[t]['cache']} s; speed vs {first}: {ratio[t]}")
        print(f"same shard bytes in every tree: {result['same_shard_bytes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
