"""Time and memory of the record index at LLaVA-Video-178K scale (issues 8 and 21).

    python benchmarks/index_memory.py --json                     # 1.3M records over 178K videos
    python benchmarks/index_memory.py --records 20000 --videos 3000 --repeat 1 --json   # quick

Writes a JSON array shaped like LLaVA-Video-178K's ``*_qa_processed.json`` (``id``,
``video``, ``conversations`` with the ``<image>`` video tag, ``data_source``), about
7 records per video, each video's records scattered over the file; then, each in fresh
processes, with the node's index cache (``XDG_CACHE_HOME``) in a folder of its own:

* **cold**: StreamingDataset construction with an empty cache (one pass over the JSON,
  the index saved); ``--videos-from DIR``: the videos are real MP4s (symlinks to DIR's,
  so each is a group of its own), so the build also reads every video's ``moov`` for the
  cost model's facts (without it they do not exist: no facts, only the JSON);
* **warm**: construction with the cache there (a restart), median of ``--repeat``;
* **ranks at once**: ``--ranks`` processes released together, warm and cold (one of
  them builds, the others wait for it); the wall time is the slowest's. Where the
  machine has fewer cores than ``--ranks``, warm starts of as many ranks as cores are
  timed too: a warm start is CPU work (its CPU seconds are recorded), so more ranks than
  cores take at least ranks / cores times one rank's CPU seconds, whatever the code;
* **per-worker memory**: 2 DataLoader workers each walk their whole share (every group
  of the epoch order, every index array) and report RSS, PSS and USS
  (``/proc/self/smaps_rollup``) against the same with a one-record config, and the
  resident and proportional size of their mapping of the index file (``/proc/self/smaps``).
  The index is a read-only mapping shared by every process of the node: RSS counts its
  pages in every process that touched them, PSS divides them among those processes (one
  copy in RAM for the node). A worker's index memory is reported as its mapping's PSS plus
  its USS growth (what it allocated alone); whole-process PSS deltas are noisy on a shared
  machine (other processes map the same libraries).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT  # noqa: E402

CHILD = r"""
import json, multiprocessing, os, sys, time
ann, root, ready, go, walk = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
from torch.utils.data import DataLoader
from mmstream import StreamingDataset
from mmstream.benchmark import proc_status_mb
from mmstream.cli.common import identity

def smaps_mb():
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {"rss_mb": out["Rss"], "pss_mb": out["Pss"], "uss_mb": out["Private_Clean"] + out["Private_Dirty"]}

def index_map_mb():
    # the mapping of the index cache file in this process: its resident pages, and their share
    out, inside = {"map_rss_mb": 0.0, "map_pss_mb": 0.0}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                inside = len(parts) >= 6 and parts[-1].endswith(".idx")
            elif inside and parts[0] in ("Rss:", "Pss:"):
                out["map_" + parts[0][:-1].lower() + "_mb"] += int(parts[1]) / 1024
    return out

class Walk(StreamingDataset):
    def __iter__(self):
        me, total = self.shard()
        n = 0
        for g in self.my_groups(me, total):
            n += len(self.index.members(int(g)))
        touched = sum(int(getattr(self.index, a).view("u1").sum()) for a in self.index.ARRAYS)
        # every worker has touched the whole index before any measures: a page's PSS is split
        # among the processes that map it at that instant (a fast worker would see 1/2, not 1/3)
        self.touched.wait(timeout=600)
        yield {"records": n, "t": touched, **smaps_mb(), **index_map_mb()}

cfg = {"sources": [{"name": "llava178k", "format": "llava", "annotations": ann, "media_root": root}]}
if ready:
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
t0, c0 = time.perf_counter(), time.process_time()
ds = Walk(cfg, progress=False)
main = {"construct_s": round(time.perf_counter() - t0, 3), "construct_cpu_s": round(time.process_time() - c0, 3),
        "cache": ds.index.cache["status"],
        "main_peak_mb": round(proc_status_mb("VmHWM"), 1), "index_nbytes": ds.index.nbytes(),
        "positions": ds.index.num_positions, "groups": ds.index.num_groups,
        "probed_videos": int(ds.index.facts["probed"].sum())}
ds.touched = multiprocessing.get_context("fork").Barrier(2)  # inherited by the forked workers
workers = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=identity,
                          multiprocessing_context="fork")) if walk else []
print(json.dumps({"main": main, "workers": workers}))
"""


def write_annotations(path: str, records: int, videos: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    owner = [i % videos for i in range(records)]  # every video used, about records/videos times
    rng.shuffle(owner)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("[\n")
        for i, v in enumerate(owner):
            rec = {"id": f"{v:06d}_{i}", "video": f"academic_source/activitynet/v_{v:08x}.mp4",
                   "conversations": [{"from": "human", "value": f"<image>\nWhat happens in the video at moment {i}?"},
                                     {"from": "gpt", "value": f"An answer of a few words, number {i}."}],
                   "data_source": "activitynet"}
            f.write(("," if i else "") + json.dumps(rec) + "\n")
        f.write("]\n")
    os.replace(tmp, path)


def link_videos(root: str, videos: int, source: str) -> None:
    """``root/academic_source/activitynet/v_<n>.mp4`` for every video: symlinks to the MP4s in
    ``source``, in turn (each link its own decode group, with real facts to read)."""
    real = sorted(os.path.join(source, n) for n in os.listdir(source) if n.endswith(".mp4"))
    folder = os.path.join(root, "academic_source", "activitynet")
    os.makedirs(folder, exist_ok=True)
    for v in range(videos):
        dst = os.path.join(folder, f"v_{v:08x}.mp4")
        if not os.path.lexists(dst):
            os.symlink(real[v % len(real)], dst)


def measure(path: str, root: str, cache: str, *, walk: bool = False, ranks: int = 1) -> list[dict]:
    """``ranks`` processes constructing the dataset, released at the same moment."""
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    go = os.path.join(cache, "go")
    if os.path.exists(go):
        os.remove(go)
    readies = [os.path.join(cache, f"ready{i}") for i in range(ranks)] if ranks > 1 else [""]
    procs = []
    for ready in readies:
        if ready and os.path.exists(ready):
            os.remove(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, path, root, ready, go, "1" if walk else "0"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
    if ranks > 1:
        while not all(os.path.exists(r) for r in readies):
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        open(go, "w").close()
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"index_memory: failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run(records: int, videos: int, data_dir: str, repeat: int = 3, ranks: int = 4,
        videos_from: str = "") -> dict:
    os.makedirs(data_dir, exist_ok=True)
    big = os.path.join(data_dir, f"llava178k_like_{records}.json")
    if not os.path.exists(big):
        t0 = time.perf_counter()
        write_annotations(big, records, videos)
        print(f"wrote {big} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    root = data_dir
    if videos_from:
        root = os.path.join(data_dir, f"videos_{videos}")
        link_videos(root, videos, os.path.abspath(videos_from))
    small = os.path.join(data_dir, "one_record.json")
    write_annotations(small, 1, 1)
    med = statistics.median

    def fresh(name: str) -> str:
        folder = os.path.join(data_dir, "cache_home", name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        return folder

    cores = len(os.sched_getaffinity(0))
    cold, warm, ranks_warm, ranks_cold, cores_warm = [], [], [], [], []
    for i in range(repeat):
        home = fresh("one")
        cold.append(measure(big, root, home)[0]["main"])
        warm.append(measure(big, root, home)[0]["main"])
        ranks_warm.append(max(r["main"]["construct_s"] for r in measure(big, root, home, ranks=ranks)))
        if 1 < cores < ranks:
            cores_warm.append(max(r["main"]["construct_s"] for r in measure(big, root, home, ranks=cores)))
        together = [r["main"] for r in measure(big, root, fresh("ranks"), ranks=ranks)]
        ranks_cold.append({"wall_s": max(m["construct_s"] for m in together),
                           "built": sum(m["cache"] == "built" for m in together)})
        print(f"index: cold {cold[-1]['construct_s']} s, warm {warm[-1]['construct_s']} s, {ranks} ranks warm "
              f"{ranks_warm[-1]} s, cold {ranks_cold[-1]['wall_s']} s", file=sys.stderr)
    walked = measure(big, root, os.path.join(data_dir, "cache_home", "one"), walk=True)[0]
    one = measure(small, data_dir, fresh("small"), walk=True)[0]
    main = cold[0]
    per = {k: [round(w[k] - o[k], 1) for w, o in zip(walked["workers"], one["workers"])]
           for k in ("rss_mb", "pss_mb", "uss_mb")}
    # what the index costs a worker: its share of the mapped file (PSS of the mapping) plus
    # what the worker allocated beyond the one-record run (USS: its own arrays, e.g. the epoch order)
    index_mb = [round(w["map_pss_mb"] + max(0.0, u), 1) for w, u in zip(walked["workers"], per["uss_mb"])]
    warm_s = med(m["construct_s"] for m in warm)
    warm_cpu_s = med(m["construct_cpu_s"] for m in warm)
    # more ranks than cores: each core runs ranks / cores warm starts one after another at best
    floor_s = warm_cpu_s * max(ranks / cores, 1.0)
    by_cores = {"ranks_cores": cores, "ranks_cores_warm_s": med(cores_warm),
                "ranks_cores_warm_ratio": round(med(cores_warm) / warm_s, 2)} if cores_warm else {}
    return {"records": records, "videos": videos, "annotation_bytes": os.path.getsize(big), "repeat": repeat,
            "real_videos": bool(videos_from), "probed_videos": main["probed_videos"],
            "cold_s": med(m["construct_s"] for m in cold), "warm_s": warm_s, "warm_cpu_s": warm_cpu_s,
            "cores": cores, "ranks": ranks, "ranks_warm_s": med(ranks_warm),
            "ranks_warm_ratio": round(med(ranks_warm) / warm_s, 2),
            "ranks_warm_floor_ratio": round(floor_s / warm_s, 2), **by_cores,
            "ranks_cold_s": med(r["wall_s"] for r in ranks_cold), "ranks_cold_builds": [r["built"] for r in ranks_cold],
            "runs": {"cold_s": [m["construct_s"] for m in cold], "warm_s": [m["construct_s"] for m in warm],
                     "warm_cpu_s": [m["construct_cpu_s"] for m in warm], "ranks_warm_s": ranks_warm,
                     "ranks_cores_warm_s": cores_warm, "ranks_cold_s": [r["wall_s"] for r in ranks_cold]},
            "build_s": med(m["construct_s"] for m in cold),  # (issue 8's name for the cold construction)
            "index_mb": round(main["index_nbytes"] / (1 << 20), 1), "groups": main["groups"],
            "main_peak_mb": main["main_peak_mb"], "main_peak_mb_one_record": one["main"]["main_peak_mb"],
            "worker_rss_mb": [w["rss_mb"] for w in walked["workers"]],
            "worker_rss_mb_one_record": [w["rss_mb"] for w in one["workers"]],
            "worker_index_mb": per["rss_mb"], "worker_pss_mb": per["pss_mb"], "worker_index_uss_mb": per["uss_mb"],
            "worker_index_map_rss_mb": [round(w["map_rss_mb"], 1) for w in walked["workers"]],
            "worker_index_map_pss_mb": [round(w["map_pss_mb"], 1) for w in walked["workers"]],
            "worker_index_pss_mb": index_mb, "worker_records": [w["records"] for w in walked["workers"]]}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_300_000)
    p.add_argument("--videos", type=int, default=178_000)
    p.add_argument("--data", default=os.path.join(ROOT, "build", "bench", "index"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ranks", type=int, default=4, help="processes starting at once on the node")
    p.add_argument("--videos-from", default="", metavar="DIR",
                   help="link every video to one of DIR's MP4s (the build then reads their facts)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args.records, args.videos, args.data, args.repeat, args.ranks, args.videos_from)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['records']} records over {r['videos']} videos ({r['annotation_bytes'] / 1e6:.0f} MB of JSON): "
              f"index {r['index_mb']} MB; construction cold {r['cold_s']} s, warm {r['warm_s']} s, {r['ranks']} "
              f"ranks at once {r['ranks_warm_s']} s warm ({r['ranks_warm_ratio']}x one rank), "
              f"{r['ranks_cold_s']} s cold; per worker: index PSS {r['worker_index_pss_mb']} MB, "
              f"USS {r['worker_index_uss_mb']} MB, RSS {r['worker_index_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
