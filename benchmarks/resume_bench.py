"""What a resume's content check costs (issue 22, item 2), against reading the bytes once.

    python benchmarks/resume_bench.py --gb 10 --json            # the measurement (a 10 GB cache)
    python benchmarks/resume_bench.py --gb 0.05 --json          # a smoke run

Writes a cache of ``--gb`` GB of incompressible tar shards with mmstream's own
``ShardWriter`` and a rank manifest that lists them (killed before its last record,
so a rerun resumes), then times, ``--repeat`` times each, interleaved:

* ``resume_check``: ``open_rank(..., resume=True)``, the first step of a rerun of
  ``mmstream cache``: every completed shard hashed again (sha256, parallel threads) and
  compared with the manifest;
* ``read_once``: every shard read once, sequentially, nothing computed (the floor);
* ``sha256_one_thread``: every shard hashed by one thread (what the check costs without
  its threads).

Each run starts cold: the shards' pages are dropped from the page cache first
(``posix_fadvise(DONTNEED)``, this benchmark's files only); ``--warm`` skips that (the
bytes then come from memory and the hashing is what is measured). Medians; the
ratio ``resume_check / read_once`` is the figure of merit (about 1 when the disk is the
limit). The cache goes to ``--out`` (default ``build/resume_bench``; ``--keep`` keeps it
for another run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mmstream.benchmark import machine_info  # noqa: E402
from mmstream.config import load_config  # noqa: E402
from mmstream.sinks import ShardWriter  # noqa: E402
from mmstream.sinks import manifest as mf  # noqa: E402
from mmstream.sinks.cache import manifest_config, open_rank  # noqa: E402
from mmstream.sinks.formats import Encoded  # noqa: E402
from mmstream.sinks.shards import sha256_file  # noqa: E402

CONFIG = {"sources": [{"name": "bench", "annotations": "/nonexistent/resume_bench.json"}],
          "model": {"name": "minicpmv-2.6"}, "output": {"format": "minicpmv", "maxcount": 1}}
CHUNK = 1 << 20


def build(out: str, gb: float, shard_mb: float, member_kb: float) -> dict:
    """The cache: shards of about ``shard_mb`` MB, 24 frames of ``member_kb`` KB per sample."""
    frames_per_sample = 24
    sample_bytes = frames_per_sample * member_kb * 1024
    per_shard = max(1, int(shard_mb * (1 << 20) // sample_bytes))
    samples = max(1, int(gb * (1 << 30) // sample_bytes))
    config = load_config(dict(CONFIG, output=dict(CONFIG["output"], maxcount=per_shard)))
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    manifest = mf.RankManifest(out, 0, 1, manifest_config(config))
    pool = os.urandom(64 << 20)  # slices of it: incompressible, and fast to make
    size = int(member_kb * 1024)
    t0 = time.perf_counter()
    with ShardWriter(out, lambda i: f"minicpmv-{i:06d}.tar", maxcount=per_shard,
                     on_commit=lambda info: manifest.add_shard(info, [])) as writer:
        for i in range(samples):
            members = []
            for j in range(frames_per_sample):
                start = ((i * frames_per_sample + j) * 7919 * 4096) % (len(pool) - size)
                members.append((f"{j:05d}.jpg", pool[start:start + size]))
            members.append(("json", json.dumps({"id": i}).encode()))
            writer.write(Encoded(key=f"bench-{i:08d}", members=members))
    manifest.save()  # not complete: a rerun resumes
    return {"config": config, "samples": samples, "shards": len(manifest.shards),
            "bytes": sum(int(s["bytes"]) for s in manifest.shards), "build_s": round(time.perf_counter() - t0, 2)}


def drop_cache(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_once(paths: list[str]) -> None:
    buf = bytearray(CHUNK)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def sha_one_thread(paths: list[str]) -> None:
    for p in paths:
        sha256_file(p, CHUNK)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=10.0, help="size of the cache (default 10)")
    p.add_argument("--shard-mb", type=float, default=256.0)
    p.add_argument("--member-kb", type=float, default=100.0, help="bytes of one frame member")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "resume_bench"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warm", action="store_true", help="keep the page cache (measure the hashing)")
    p.add_argument("--keep", action="store_true", help="keep the cache folder afterwards")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    built = build(out, args.gb, args.shard_mb, args.member_kb)
    config = built.pop("config")
    paths = [os.path.join(out, s["name"]) for s in mf.RankManifest.load(out, 0).shards]
    jobs = {
        "resume_check": lambda: open_rank(out, config, 0, 1, resume=True),
        "read_once": lambda: read_once(paths),
        "sha256_one_thread": lambda: sha_one_thread(paths),
    }
    runs: dict[str, list[float]] = {k: [] for k in jobs}
    try:
        for _ in range(args.repeat):
            for name, job in jobs.items():
                if not args.warm:
                    drop_cache(paths)
                t0 = time.perf_counter()
                got = job()
                runs[name].append(round(time.perf_counter() - t0, 3))
                if name == "resume_check":
                    manifest, resumed = got
                    assert resumed and len(manifest.shards) == built["shards"], "the check dropped a shard"
                print(f"{name}: {runs[name][-1]} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    gb = built["bytes"] / (1 << 30)
    result = {"gb": round(gb, 3), **built, "repeat": args.repeat, "cold": not args.warm,
              "check_threads": min(mf.MAX_CHECK_THREADS, os.cpu_count() or 1, built["shards"]),
              "runs_s": runs, "median_s": med,
              "gb_per_s": {k: round(gb / v, 3) if v else None for k, v in med.items()},
              "check_vs_read_once": round(med["resume_check"] / med["read_once"], 3) if med["read_once"] else None,
              "machine": machine_info(),
              "command": "python benchmarks/resume_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{gb:.2f} GB in {built['shards']} shards: resume check {med['resume_check']} s, read once "
              f"{med['read_once']} s ({result['check_vs_read_once']}x), sha256 on one thread "
              f"{med['sha256_one_thread']} s ({'cold' if not args.warm else 'warm'} page cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
