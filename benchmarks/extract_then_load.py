"""Extract-then-load: what the seed recipes do before the first training step.

    python benchmarks/extract_then_load.py build/bench/epoch.yaml --workers 2 --json

1. extract: ``ffmpeg -i VIDEO -vf fps=1 DIR/%05d.png`` for every distinct video of
   CONFIG (``--workers`` ffmpeg processes at a time, each with FFmpeg's default threads);
2. reformat: write the MiniCPM-V JSON (T2Vid's ``reformat_json``: at most 24 frames per
   video by T2Vid's rule, ``{"image": {"<image_00>": path, ...}, "conversations": ...}``);
3. load one epoch: a DataLoader with ``--workers`` workers reads each record's PNGs with
   PIL (``Image.open(p).convert("RGB")``) into arrays.

``wall_s`` is the sum of the three (the time until one epoch has been served);
``bytes_written`` the PNGs and JSON it wrote. The output folder is deleted afterwards
unless ``--keep``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, MeasuredDataset, main, parser, video_items  # noqa: E402

from mmstream.cli.common import identity  # noqa: E402
from mmstream.benchmark import cpu_seconds, make_result  # noqa: E402
from mmstream.media.sampling import cap_indices  # noqa: E402


def extract(video: str, out_dir: str, fps: float) -> None:
    os.makedirs(out_dir, exist_ok=True)
    res = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", video, "-vf", f"fps={fps:g}",
                          os.path.join(out_dir, "%05d.png")], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {video}: {res.stderr[-500:]}")


def minicpmv_record(item, frame_paths: list[str]) -> dict:
    tags = [f"<image_{i:02d}>" for i in range(len(frame_paths))]
    conv = []
    for i, (role, content) in enumerate(item.turns):
        if i == 0:
            content = "".join(t + "\n" for t in tags) + content.replace("<video>", "").strip()
        conv.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    return {"id": item.key, "image": dict(zip(tags, frame_paths)), "conversations": conv}


class PngDataset(MeasuredDataset):
    """The extracted PNGs of one MiniCPM-V record per item, loaded with PIL."""

    def setup(self) -> None:
        from PIL import Image  # noqa: F401

    def load(self, record) -> dict:
        from PIL import Image

        t0 = time.perf_counter()
        frames = []
        for path in record["image"].values():
            with Image.open(path) as im:
                frames.append(np.asarray(im.convert("RGB")))
        return {"frames": np.stack(frames), "load_s": time.perf_counter() - t0}


def _tree_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def run(args) -> dict:
    from torch.utils.data import DataLoader

    items = video_items(args.config)
    scratch = os.path.join(ROOT, "build")
    os.makedirs(scratch, exist_ok=True)  # a fresh clone has no build/ yet
    work = args.out or tempfile.mkdtemp(prefix="extract-", dir=scratch)
    os.makedirs(work, exist_ok=True)
    videos = sorted({it.path for it in items})
    folder = {v: os.path.join(work, "frames", f"{i:05d}_" + os.path.splitext(os.path.basename(v))[0])
              for i, v in enumerate(videos)}
    fps = {it.path: float(it.sampling.fps or 1.0) for it in items}
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    try:
        # 1. extract every video once
        with ThreadPoolExecutor(max(1, args.workers)) as pool:
            list(pool.map(lambda v: extract(v, folder[v], fps[v]), videos))
        t_extract = time.perf_counter() - t0
        # 2. reformat to MiniCPM-V JSON, capping at max_frames with the stream's rule
        records = []
        for it in items:
            names = sorted(os.listdir(folder[it.path]))
            keep = cap_indices(range(len(names)), it.sampling.max_frames, it.sampling.strategy)
            records.append(minicpmv_record(it, [os.path.join(folder[it.path], names[k]) for k in keep]))
        with open(os.path.join(work, "train.json"), "w") as f:
            json.dump(records, f)
        t_reformat = time.perf_counter() - t0 - t_extract
        # 3. one epoch of loading
        kwargs = {"prefetch_factor": 2} if args.workers > 0 else {}
        loader = DataLoader(PngDataset(records), batch_size=None, num_workers=args.workers,
                            collate_fn=identity, **kwargs)
        t_load0 = time.perf_counter()
        first = None
        n = frames = 0
        load_s = 0.0
        peaks: dict = {}
        starts: dict = {}
        it = iter(loader)
        for r in it:
            first = first if first is not None else time.perf_counter() - t0
            n += 1
            frames += len(r["frames"])
            load_s += r["load_s"]
            peaks[r["worker"]] = max(peaks.get(r["worker"], 0.0), r["peak"])
            starts.setdefault(r["worker"], r["start"])
        del it
        wall = time.perf_counter() - t0
        t_load = time.perf_counter() - t_load0
        written = _tree_bytes(work)
        png_count = sum(len(os.listdir(d)) for d in folder.values())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = {}
    for item in items:
        if item.path not in seconds:
            from mmstream.media.probe import probe_video

            seconds[item.path] = probe_video(item.path).duration_seconds
    return make_result(
        "extract_then_load", args.config, args.workers, wall=wall, first=first, samples=n, frames=frames,
        video_seconds=sum(seconds[it.path] for it in items),
        stages={"decode": t_extract, "write": t_reformat, "read": load_s},
        peaks=[peaks[k] for k in sorted(peaks)], starts=[starts[k] for k in sorted(starts)],
        cpu=cpu_seconds() - cpu0, bytes_written=written,
        extra={"decoder": "ffmpeg CLI -vf fps + PNG", "phases_s": {
            "extract": round(t_extract, 3), "reformat": round(t_reformat, 3), "load_epoch": round(t_load, 3)},
            "pngs_written": png_count})


if __name__ == "__main__":
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for the frames (default: a temporary one under build/)")
    p.add_argument("--keep", action="store_true", help="keep the extracted frames")
    sys.exit(main(run, p.parse_args()))
