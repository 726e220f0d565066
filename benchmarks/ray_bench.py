"""The Ray engine against the local one (issue 12), caching on this machine.

    python benchmarks/ray_bench.py build/bench --json

* the epoch set: ``mmstream cache --engine ray --workers 2`` (a local Ray instance of 2
  CPUs) against ``mmstream cache --workers 2`` (DataLoader workers);
* the epoch set four times over (88 records, each copy's videos under their own names):
  the same two, so that the fixed start-up is a smaller part of the run;
* a skewed set, one 30-minute video among 40 short ones: the Ray engine against the
  static split of 2 ranks (``--rank 0/1 --world-size 2``, one worker each, run at the same
  time; the wall time is the slower rank's).

Each in turn, ``--repeat`` times, medians of wall seconds (Ray's start-up included: it is
what a user waits for). Outputs go to a temporary folder under build/.
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
#: Copies of the epoch set in the larger run (start-up amortised over more records).
COPIES = 4

CACHE_CFG = """\
sources:
  - {{name: {name}, format: llava, annotations: {ann}, media_root: {root}}}
sampling: {{fps: 1.0, max_frames: 24, strategy: t2vid}}
filter: {{one_video_in_first_turn: true}}
model: {{name: minicpmv-2.5}}
output: {{format: minicpmv, layout: wds, maxcount: 10000}}
"""


def timed(cmds: list[list[str]]) -> float:
    """Wall seconds until every command (started together) has finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"ray_bench: failed: {' '.join(p.args)}\n{err.decode()[-3000:]}")
    return time.perf_counter() - t0


def cache(cfg: str, out: str, *extra: str) -> list[str]:
    return [PY, "-m", "mmstream.cli", "cache", cfg, "--output", out, "--no-progress", *extra]


def _link(folder: str, src: str, name: str) -> str:
    """``src`` as ``folder/videos/name`` (a symlink, so a decode group of its own)."""
    dst = os.path.join(folder, "videos", name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst):
        os.symlink(src, dst)
    return dst


def _write_set(folder: str, name: str, records: list[dict]) -> str:
    """``records`` as ``folder/name.jsonl`` and the cache config that reads them; its path."""
    ann = os.path.join(folder, f"{name}.jsonl")
    with open(ann, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    cfg = os.path.join(folder, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(CACHE_CFG.format(name=name, ann=ann, root="/"))
    return cfg


def skewed_set(data: str, folder: str) -> str:
    """One 30-minute 720p video and 40 short ones (10 to 30 s, each a distinct file)."""
    with open(os.path.join(data, "manifest.json")) as f:
        clips = json.load(f)["clips"]
    short = sorted(n for n, c in clips.items() if "epoch" in c["roles"] and c["seconds"] <= 30)
    videos = []
    for i in range(40):
        src = os.path.join(data, "videos", short[i % len(short)])
        videos.append(_link(folder, src, f"short{i:02d}{os.path.splitext(src)[1]}"))
    videos.insert(17, os.path.join(data, "videos", next(n for n, c in clips.items() if "mem_30min" in c["roles"])))
    return _write_set(folder, "skewed", [
        {"id": f"s{i}", "video": v, "conversations": [
            {"from": "human", "value": "<video>\nDescribe it."}, {"from": "gpt", "value": "A video."}]}
        for i, v in enumerate(videos)])


def repeated_epoch(data: str, folder: str, copies: int) -> str:
    """The epoch set ``copies`` times over, each copy's videos under their own names
    (symlinks: distinct decode groups), so that start-up is a smaller part of the run."""
    with open(os.path.join(data, "annotations", "epoch.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return _write_set(folder, f"epoch_x{copies}", [
        {**r, "id": f"c{c}_{r['id']}",
         "video": _link(folder, os.path.join(data, r["video"]), f"c{c}_{os.path.basename(r['video'])}")}
        for c in range(copies) for r in recs])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the benchmark set (benchmarks/make_data.py --out DIR)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="ray-bench-", dir=os.path.join(ROOT, "build"))
    try:
        epoch_cfg = os.path.join(work, "epoch_cache.yaml")
        with open(epoch_cfg, "w") as f:
            f.write(CACHE_CFG.format(name="epoch", ann=os.path.join(data, "annotations", "epoch.jsonl"), root=data))
        skew_cfg = skewed_set(data, work)
        big_cfg = repeated_epoch(data, work, COPIES)
        jobs = {
            "epoch_local": lambda o: [cache(epoch_cfg, o, "--workers", "2")],
            "epoch_ray": lambda o: [cache(epoch_cfg, o, "--engine", "ray", "--workers", "2")],
            "skew_ranks": lambda o: [cache(skew_cfg, o, "--rank", str(r), "--world-size", "2", "--workers", "1")
                                     for r in (0, 1)],
            "skew_ray": lambda o: [cache(skew_cfg, o, "--engine", "ray", "--workers", "2")],
            "big_local": lambda o: [cache(big_cfg, o, "--workers", "2")],
            "big_ray": lambda o: [cache(big_cfg, o, "--engine", "ray", "--workers", "2")],
        }
        runs: dict[str, list[float]] = {k: [] for k in jobs}
        first: dict[str, list[float]] = {k: [] for k in jobs}  # start-up: until the first sample reached the writer
        for i in range(args.repeat):
            for name, make in jobs.items():
                out = os.path.join(work, f"{name}-{i}")
                runs[name].append(round(timed(make(out)), 2))
                with open(os.path.join(out, "manifest.json")) as f:
                    first[name].append(max(r.get("first_item_s") or 0 for r in json.load(f)["runs"].values()))
                print(f"{name}: {runs[name][-1]} s (first item after {first[name][-1]} s)", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"repeat": args.repeat, "runs_s": runs, "median_s": med,
           "first_item_s": {k: statistics.median(v) for k, v in first.items()},
           "epoch_ratio": round(med["epoch_local"] / med["epoch_ray"], 3),  # Ray throughput / local throughput
           "skew_speedup": round(med["skew_ranks"] / med["skew_ray"], 3),
           "big_copies": COPIES, "big_ratio": round(med["big_local"] / med["big_ray"], 3),
           "command": "python benchmarks/ray_bench.py build/bench --json"}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"epoch set: Ray {med['epoch_ray']} s vs --workers 2 {med['epoch_local']} s = {out['epoch_ratio']}x "
              f"throughput; skewed set: Ray {med['skew_ray']} s vs 2 static ranks {med['skew_ranks']} s = "
              f"{out['skew_speedup']}x faster; epoch set x{COPIES}: {out['big_ratio']}x throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
