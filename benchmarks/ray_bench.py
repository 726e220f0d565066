"""The Ray engine against the local one and against a static split (issues 12 and 21),
caching on this machine.

    python benchmarks/ray_bench.py build/bench --repeat 3 --json
    python benchmarks/ray_bench.py build/bench-quick --repeat 1 --copies 2 --skew-short 4 --json   # smoke

* **the epoch set x10** (``--copies``; 220 records, each copy's videos under their own
  names, so distinct decode groups): ``mmstream cache --engine ray --workers 2`` (a local
  Ray instance of 2 CPUs), with tasks and with ``--ray-actors``, against ``mmstream
  cache --workers 2`` (DataLoader workers); Ray's start-up is counted (what a user waits
  for) and amortised over the larger set;
* **the skewed set with dense sampling**: one 30-minute 720p video among ``--skew-short``
  short ones (10 to 30 s, each a distinct file), fps 1 and no cap (every second of video
  is a frame: the long video is 30 minutes of decoding; frames resized to
  ``SKEW_MAX_PIXELS`` so that its 1800 frames fit in memory), Ray (tasks, actors) against
  the static split of 2 ranks (``--rank 0/1 --world-size 2``, one worker each, run at the
  same time; the wall time is the slower rank's); Ray tasks decode the long video in
  parts (``skew_ray``; ``skew_ray_whole``: ``--ray-parts 1``, each video whole;
  ``skew_ray_cluster``: on a Ray cluster already running on this machine, ``ray start
  --head --num-cpus 2``, as on a real cluster, where Ray's own start-up is not part of a run);

each in turn, ``--repeat`` times, medians of wall seconds. From each run's manifest:
the first sample's time, the bytes the driver received from the Ray workers against
the shard bytes they wrote, and each worker's busy seconds (Ray: per worker process;
the static split: per rank), as max/mean. Outputs go to a temporary folder under build/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
#: Copies of the epoch set (start-up amortised over more records: issue 21 asks >= 200).
COPIES = 10
#: Short videos beside the 30-minute one in the skewed set.
SKEW_SHORT = 40
#: Frame size bound of the dense skewed set (224 x 224): the 30-minute video's 1800 frames in ~270 MB.
SKEW_MAX_PIXELS = 50176

CACHE_CFG = """\
sources:
  - {{name: {name}, format: llava, annotations: {ann}, media_root: {root}}}
sampling: {sampling}
filter: {{one_video_in_first_turn: true}}
model: {{name: minicpmv-2.5}}
output: {{format: minicpmv, layout: wds, maxcount: {maxcount}}}
"""
#: T2Vid's sampling (the epoch set) and dense sampling (the skewed set).
SPARSE = "{fps: 1.0, max_frames: 24, strategy: t2vid}"
#: (decode_timeout: the 30-minute video's decode as one piece takes ~55 s here, near the 60 s default)
DENSE = "{fps: 1.0, max_frames: null, strategy: none, resize: {max_pixels: %d}, decode_timeout: 600}" % SKEW_MAX_PIXELS


def timed(cmds: list[list[str]], env: Optional[dict] = None) -> float:
    """Wall seconds until every command (started together) has finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"ray_bench: failed: {' '.join(p.args)}\n{err.decode()[-3000:]}")
    return time.perf_counter() - t0


@contextlib.contextmanager
def running_cluster(cpus: int = 2):
    """A Ray head node on this machine (``ray start --head``) for the jobs run meanwhile:
    what a run on a cluster finds (``--address``/``RAY_ADDRESS``); stopped at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = os.path.join(os.path.dirname(PY), "ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # a local benchmark cluster: no token to hand around
    subprocess.run([ray, "start", "--head", "--num-cpus", str(cpus), "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, cwd=ROOT, env=env)
    try:
        yield dict(env, RAY_ADDRESS=f"127.0.0.1:{port}")
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def cache(cfg: str, out: str, *extra: str) -> list[str]:
    return [PY, "-m", "mmstream.cli", "cache", cfg, "--output", out, "--no-progress", *extra]


def _link(folder: str, src: str, name: str) -> str:
    """``src`` as ``folder/videos/name`` (a symlink, so a decode group of its own)."""
    dst = os.path.join(folder, "videos", name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst):
        os.symlink(src, dst)
    return dst


def _write_set(folder: str, name: str, records: list[dict], sampling: str, maxcount: int = 10000) -> str:
    """``records`` as ``folder/name.jsonl`` and the cache config that reads them; its path."""
    ann = os.path.join(folder, f"{name}.jsonl")
    with open(ann, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    cfg = os.path.join(folder, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(CACHE_CFG.format(name=name, ann=ann, root="/", sampling=sampling, maxcount=maxcount))
    return cfg


def skewed_set(data: str, folder: str, short_count: int) -> str:
    """One 30-minute 720p video and ``short_count`` short ones (10 to 30 s, each a distinct
    file), sampled densely."""
    with open(os.path.join(data, "manifest.json")) as f:
        clips = json.load(f)["clips"]
    short = sorted(n for n, c in clips.items() if "epoch" in c["roles"] and c["seconds"] <= 30)
    videos = []
    for i in range(short_count):
        src = os.path.join(data, "videos", short[i % len(short)])
        videos.append(_link(folder, src, f"short{i:02d}{os.path.splitext(src)[1]}"))
    videos.insert(min(17, len(videos)), os.path.join(data, "videos", next(n for n, c in clips.items()
                                                                          if "mem_30min" in c["roles"])))
    return _write_set(folder, "skewed", [
        {"id": f"s{i}", "video": v, "conversations": [
            {"from": "human", "value": "<video>\nDescribe it."}, {"from": "gpt", "value": "A video."}]}
        for i, v in enumerate(videos)], DENSE, maxcount=8)


def repeated_epoch(data: str, folder: str, copies: int) -> str:
    """The epoch set ``copies`` times over, each copy's videos under their own names
    (symlinks: distinct decode groups), so that start-up is a smaller part of the run."""
    with open(os.path.join(data, "annotations", "epoch.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return _write_set(folder, f"epoch_x{copies}", [
        {**r, "id": f"c{c}_{r['id']}",
         "video": _link(folder, os.path.join(data, r["video"]), f"c{c}_{os.path.basename(r['video'])}")}
        for c in range(copies) for r in recs], SPARSE, maxcount=32)


def run_stats(out: str) -> dict:
    """What the finalized manifest says about the run(s): first sample, driver bytes, busy time."""
    with open(os.path.join(out, "manifest.json")) as f:
        runs = list(json.load(f)["runs"].values())
    first = max(r.get("first_item_s") or 0 for r in runs)
    if len(runs) > 1 or "worker_busy_s" not in runs[0]:  # static ranks: each rank is one worker
        busy = [r["seconds"] for r in runs]
    else:
        busy = runs[0]["worker_busy_s"]
    dropped = sum(r.get("records", 0) - r.get("kept", 0) for r in runs)
    if dropped:  # a timing of less work is no result
        raise SystemExit(f"ray_bench: {out}: {dropped} record(s) dropped: {[r.get('dropped') for r in runs]}")
    stats = {"first_item_s": first, "busy_s": busy,
             "busy_max_over_mean": round(max(busy) / (sum(busy) / len(busy)), 3) if busy and sum(busy) else None}
    if "clips_decoded_in_parts" in runs[0]:
        stats["clips_decoded_in_parts"] = runs[0]["clips_decoded_in_parts"]
    if "driver_bytes_received" in runs[0]:
        stats["driver_bytes_received"] = runs[0]["driver_bytes_received"]
        stats["shard_bytes_written"] = runs[0]["shard_bytes_written"]
        stats["driver_bytes_share"] = round(runs[0]["driver_bytes_received"] / max(1, runs[0]["shard_bytes_written"]),
                                            6)
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the benchmark set (benchmarks/make_data.py --out DIR)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--copies", type=int, default=COPIES, help="copies of the epoch set")
    p.add_argument("--skew-short", type=int, default=SKEW_SHORT, help="short videos in the skewed set")
    p.add_argument("--only", default="", help="comma-separated jobs (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="ray-bench-", dir=os.path.join(ROOT, "build"))
    try:
        skew_cfg = skewed_set(data, work, args.skew_short)
        big_cfg = repeated_epoch(data, work, args.copies)
        jobs = {
            "big_local": lambda o: [cache(big_cfg, o, "--workers", "2")],
            "big_ray": lambda o: [cache(big_cfg, o, "--engine", "ray", "--workers", "2")],
            "big_ray_actors": lambda o: [cache(big_cfg, o, "--engine", "ray", "--workers", "2", "--ray-actors")],
            "skew_ranks": lambda o: [cache(skew_cfg, o, "--rank", str(r), "--world-size", "2", "--workers", "1")
                                     for r in (0, 1)],
            "skew_ray": lambda o: [cache(skew_cfg, o, "--engine", "ray", "--workers", "2")],
            "skew_ray_actors": lambda o: [cache(skew_cfg, o, "--engine", "ray", "--workers", "2", "--ray-actors")],
            "skew_ray_whole": lambda o: [cache(skew_cfg, o, "--engine", "ray", "--workers", "2", "--ray-parts", "1")],
            "skew_ray_cluster": lambda o: [cache(skew_cfg, o, "--engine", "ray", "--workers", "2")],  # RAY_ADDRESS
        }
        if args.only:
            jobs = {k: v for k, v in jobs.items() if k in args.only.split(",")}
        runs: dict[str, list[float]] = {k: [] for k in jobs}
        stats: dict[str, list[dict]] = {k: [] for k in jobs}
        for i in range(args.repeat):
            for name, make in jobs.items():  # interleaved: each round runs every job once
                out = os.path.join(work, f"{name}-{i}")
                if name.endswith("_cluster"):
                    with running_cluster() as env:
                        runs[name].append(round(timed(make(out), env), 2))
                else:
                    runs[name].append(round(timed(make(out)), 2))
                stats[name].append(run_stats(out))
                print(f"{name}: {runs[name][-1]} s {stats[name][-1]}", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}

    def stat(job: str, key: str):
        values = [s[key] for s in stats[job] if s.get(key) is not None]
        return statistics.median(values) if values else None

    out = {"repeat": args.repeat, "copies": args.copies, "skew_short": args.skew_short, "runs_s": runs,
           "median_s": med, "stats": stats,
           "first_item_s": {k: stat(k, "first_item_s") for k in jobs},
           "busy_max_over_mean": {k: stat(k, "busy_max_over_mean") for k in jobs},
           "driver_bytes_share": {k: stat(k, "driver_bytes_share") for k in jobs if k.startswith(("big_ray",
                                                                                                  "skew_ray"))},
           "clips_decoded_in_parts": {k: stat(k, "clips_decoded_in_parts") for k in jobs if k.startswith("skew_ray")},
           "command": "python benchmarks/ray_bench.py build/bench --repeat 3 --json"}
    ratios = {"big_ratio": ("big_local", "big_ray"), "big_ratio_actors": ("big_local", "big_ray_actors"),
              "skew_speedup": ("skew_ranks", "skew_ray"), "skew_speedup_actors": ("skew_ranks", "skew_ray_actors"),
              "skew_speedup_whole": ("skew_ranks", "skew_ray_whole"),
              "skew_speedup_cluster": ("skew_ranks", "skew_ray_cluster")}
    for name, (a, b) in ratios.items():  # Ray throughput / local throughput = local time / Ray time
        if a in med and b in med:
            out[name] = round(med[a] / med[b], 3)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(json.dumps({k: v for k, v in out.items() if k not in ("stats", "runs_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
