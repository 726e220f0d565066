"""Memory and time of the record index at LLaVA-Video-178K scale (issue 8).

    python benchmarks/index_memory.py --json                     # 1.3M records over 178K videos
    python benchmarks/index_memory.py --records 20000 --videos 3000 --json   # quick

Writes a JSON array shaped like LLaVA-Video-178K's ``*_qa_processed.json`` (``id``,
``video``, ``conversations`` with the ``<image>`` video tag, ``data_source``), about
7 records per video, each video's records scattered over the file; then, each in a
fresh process:

* builds the StreamingDataset (the index) and reports the time, ``index.nbytes()`` and
  the main process's peak RSS over a config with one record;
* starts 2 DataLoader workers that each walk their whole share (every group of the
  epoch order, every member position: all of the index a worker uses) and report
  their RSS, against the same with a one-record config: the difference is what the
  index costs a worker.

Nothing is decoded (the videos need not exist).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT  # noqa: E402

CHILD = r"""
import json, os, sys, time
from torch.utils.data import DataLoader
from mmstream import StreamingDataset
from mmstream.benchmark import proc_status_mb
from mmstream.cli.common import identity

class Walk(StreamingDataset):
    def __iter__(self):
        me, total = self.shard()
        n = 0
        for g in self.epoch_groups()[me::total]:
            n += len(self.index.members(int(g)))
        touched = int(self.index.offset.sum() + self.index.length.sum() + self.index.status.sum()
                      + self.index.source.sum() + self.index.group.sum())
        yield {"records": n, "rss_mb": proc_status_mb("VmRSS"), "hwm_mb": proc_status_mb("VmHWM"), "t": touched}

cfg = {"sources": [{"name": "llava178k", "format": "llava", "annotations": sys.argv[1], "media_root": os.path.dirname(sys.argv[1])}]}
rss0 = proc_status_mb("VmRSS")
t0 = time.perf_counter()
ds = Walk(cfg, progress=False)
build_s = time.perf_counter() - t0
main = {"build_s": round(build_s, 2), "main_rss_before_mb": round(rss0, 1),
        "main_peak_mb": round(proc_status_mb("VmHWM"), 1), "main_rss_after_mb": round(proc_status_mb("VmRSS"), 1),
        "index_nbytes": ds.index.nbytes(), "positions": ds.index.num_positions, "groups": ds.index.num_groups}
workers = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=identity))
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


def measure(path: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"index_memory: failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(records: int, videos: int, data_dir: str) -> dict:
    os.makedirs(data_dir, exist_ok=True)
    big = os.path.join(data_dir, f"llava178k_like_{records}.json")
    if not os.path.exists(big):
        t0 = time.perf_counter()
        write_annotations(big, records, videos)
        print(f"wrote {big} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    small = os.path.join(data_dir, "one_record.json")
    write_annotations(small, 1, 1)
    b, s = measure(big), measure(small)
    per_worker = [round(w["rss_mb"] - ws["rss_mb"], 1) for w, ws in zip(b["workers"], s["workers"])]
    return {"records": records, "videos": videos, "annotation_bytes": os.path.getsize(big),
            "build_s": b["main"]["build_s"], "index_mb": round(b["main"]["index_nbytes"] / (1 << 20), 1),
            "groups": b["main"]["groups"],
            "main_peak_mb": b["main"]["main_peak_mb"], "main_peak_mb_one_record": s["main"]["main_peak_mb"],
            "main_after_mb": b["main"]["main_rss_after_mb"], "main_after_mb_one_record": s["main"]["main_rss_after_mb"],
            "worker_rss_mb": [w["rss_mb"] for w in b["workers"]],
            "worker_rss_mb_one_record": [w["rss_mb"] for w in s["workers"]],
            "worker_index_mb": per_worker, "worker_records": [w["records"] for w in b["workers"]]}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_300_000)
    p.add_argument("--videos", type=int, default=178_000)
    p.add_argument("--data", default=os.path.join(ROOT, "build", "bench", "index"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args.records, args.videos, args.data)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['records']} records over {r['videos']} videos ({r['annotation_bytes'] / 1e6:.0f} MB of JSON): "
              f"index {r['index_mb']} MB, built in {r['build_s']} s; per-worker RSS of the index "
              f"{r['worker_index_mb']} MB (worker RSS {r['worker_rss_mb']} vs {r['worker_rss_mb_one_record']} MB "
              f"with one record); main process peak {r['main_peak_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
