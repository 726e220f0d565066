"""Object storage against local disk (issue 11), with a real S3 server on 127.0.0.1.

    python benchmarks/storage_bench.py build/bench --json

Starts moto's S3 server in this process, uploads the benchmark set's videos and the epoch
annotations to a bucket, writes an s3:// copy of ``epoch.yaml`` and runs ``mmstream bench``
on both, in turn (``--repeat`` times, medians); then reads a 5-minute clip with T2Vid's
sparse sampling (24 frames) from the bucket and reports the bytes fetched against the
object's size: the long-GOP clip (a key frame every 10 s) at the default read-ahead and
at fixed block sizes, and a short-GOP one (every 1.2 s) at the default and 0.25 MB fixed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from servers import s3_server  # noqa: E402

BUCKET = "mmstream-bench"
LONG_GOP = "videos/h264_720p_gop250_300s.mp4"
SHORT_GOP = "videos/h264_720p_gop30_300s.mp4"
CONFIG = """\
sources:
  - {{name: {name}, format: llava, annotations: {ann}, media_root: {root},
     storage_options: {{endpoint_url: "{endpoint}", key: testing, secret: testing}}}}
sampling: {{fps: 1.0, max_frames: 24, strategy: t2vid}}
filter: {{one_video_in_first_turn: true}}
loader: {{seed: 0, mix_buffer: 32, mix_buffer_mb: 512}}
"""


def bench(config: str, workers: int) -> dict:
    res = subprocess.run([sys.executable, "-m", "mmstream.cli", "bench", config, "--workers", str(workers), "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the benchmark set (benchmarks/make_data.py --out DIR)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        with open(os.path.join(data, "annotations", "epoch.jsonl")) as f:
            videos = sorted({json.loads(line)["video"] for line in f})
        for v in videos + [LONG_GOP, SHORT_GOP]:
            s3.upload_file(os.path.join(data, v), BUCKET, v)
        s3.upload_file(os.path.join(data, "annotations", "epoch.jsonl"), BUCKET, "annotations/epoch.jsonl")
        remote_cfg = os.path.join(data, "epoch_s3.yaml")
        with open(remote_cfg, "w") as f:
            f.write(CONFIG.format(name="epoch", ann=f"s3://{BUCKET}/annotations/epoch.jsonl", root=f"s3://{BUCKET}",
                                  endpoint=endpoint))

        def sparse_run(video: str, mb: float, max_mb: float) -> dict:
            """``mmstream bench`` on one record of ``video`` from the bucket: ``mb`` blocks,
            sequential runs growing to ``max_mb`` per request."""
            ann = os.path.join(data, "annotations", "sparse_one.jsonl")
            with open(ann, "w") as f:
                f.write(json.dumps({"id": "sparse", "video": video, "conversations": [
                    {"from": "human", "value": "<video>\nDescribe it."}, {"from": "gpt", "value": "A video."}]}) + "\n")
            s3.upload_file(ann, BUCKET, "annotations/sparse_one.jsonl")
            cfg = os.path.join(data, "sparse_s3.yaml")
            with open(cfg, "w") as f:
                f.write(CONFIG.format(name="sparse", ann=f"s3://{BUCKET}/annotations/sparse_one.jsonl",
                                      root=f"s3://{BUCKET}", endpoint=endpoint)
                        .replace("strategy: t2vid}", f"strategy: t2vid, storage: {{read_ahead_mb: {mb}, "
                                                                 f"read_ahead_max_mb: {max_mb}}}}}"))
            r = bench(cfg, 0)
            r["fraction"] = round(r["bytes_read"] / os.path.getsize(os.path.join(data, video)), 3)
            return r

        runs = {"local": [], "s3": []}
        for _ in range(args.repeat):
            runs["local"].append(bench(os.path.join(data, "epoch.yaml"), args.workers))
            runs["s3"].append(bench(remote_cfg, args.workers))
        # read-ahead: fewer requests vs fewer bytes (the default first: 0.25 MB blocks, runs up to 4 MB)
        variants = {"0.25 MB blocks, runs up to 4 MB (default)": (0.25, 4.0), "0.25 MB fixed": (0.25, 0.25),
                    "0.0625 MB fixed": (0.0625, 0.0625), "1 MB fixed": (1.0, 1.0)}
        sparse = {name: sparse_run(LONG_GOP, *v) for name, v in variants.items()}
        default = next(iter(sparse))
        short = {name: sparse_run(SHORT_GOP, *variants[name]) for name in list(variants)[:2]}
    med = {k: statistics.median(r["samples_per_s"] for r in rs) for k, rs in runs.items()}
    out = {"workers": args.workers, "repeat": args.repeat,
           "local_samples_per_s": med["local"], "s3_samples_per_s": med["s3"],
           "ratio": round(med["s3"] / med["local"], 3),
           "s3_bytes_read": statistics.median(r["bytes_read"] for r in runs["s3"]),
           "local_runs_s": [r["wall_s"] for r in runs["local"]], "s3_runs_s": [r["wall_s"] for r in runs["s3"]],
           "sparse_clip": os.path.basename(LONG_GOP), "sparse_frames": sparse[default]["frames"],
           "sparse_object_bytes": os.path.getsize(os.path.join(data, LONG_GOP)),
           "sparse_fraction": sparse[default]["fraction"],  # the default read-ahead
           "sparse_by_read_ahead": {name: {"fraction": r["fraction"], "wall_s": r["wall_s"]}
                                    for name, r in sparse.items()},
           "sparse_short_gop_clip": os.path.basename(SHORT_GOP),
           "sparse_short_gop_fraction": short[default]["fraction"],
           "sparse_short_gop_by_read_ahead": {name: {"fraction": r["fraction"], "wall_s": r["wall_s"]}
                                              for name, r in short.items()},
           "command": "python benchmarks/storage_bench.py build/bench --json"}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"s3 {out['s3_samples_per_s']:.3f} vs local {out['local_samples_per_s']:.3f} samples/s = {out['ratio']}x; "
              f"sparse 24 frames of a 5 min clip read {100 * out['sparse_fraction']:.0f}% of the object (long GOP), "
              f"{100 * out['sparse_short_gop_fraction']:.0f}% (short GOP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
