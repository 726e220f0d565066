"""Decode-only bound: the same backend and the same frames as the stream, no dataset machinery.

    python benchmarks/decode_only.py build/bench/epoch.yaml --workers 2 --json

For every record of CONFIG with one video, plans and decodes exactly the frames the
stream would (``plan_media`` + ``decode_media`` with the source's sampling), in
``--workers`` forked processes that take the next video as soon as they are free
(dynamic balancing, no sharding, no shuffling, no annotation parsing in the workers,
no frames sent back). ``mmstream bench``'s samples/s divided by this one's is the
pipeline's efficiency. ``--shard static`` splits the videos as the stream does (worker w
of N takes every Nth record of the shuffled order), which separates the cost of the
split from the cost of the machinery.

    python benchmarks/decode_only.py --video FILE --fps 1 --max-frames none --json

times one video in this process, one decoder thread: probe + decode of the frames the
fps rule picks (``--max-frames N`` caps them with T2Vid's rule). ``--plan sequential``
reads them with the plain forward decoder (no seeking, no non-reference skipping: every
frame up to the last target is decoded), the reference the seek plan must equal;
``--decoder decord`` / ``torchcodec`` uses that backend. ``frames_sha1`` identifies the frames.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import main, parser, video_items  # noqa: E402

from mmstream import timing  # noqa: E402
from mmstream.benchmark import cpu_seconds, main_cpu_seconds, make_result, peak_rss_mb, proc_status_mb  # noqa: E402
from mmstream.media import decode_media, plan_media  # noqa: E402
from mmstream.types import MediaRef  # noqa: E402

_START_RSS = None


def decode_one(item) -> dict:
    """Plan and decode one video in this process; return counts, not frames."""
    global _START_RSS
    if _START_RSS is None:
        _START_RSS = proc_status_mb("VmRSS")
        timing.enable()
    before = timing.snapshot()
    ref = MediaRef("video", os.path.basename(item.path), root=os.path.dirname(item.path))
    plan = plan_media(ref, item.sampling)
    clip = decode_media(plan, item.sampling)
    after = timing.snapshot()
    stages = {k: v - before["stages"].get(k, 0.0) for k, v in after["stages"].items()}
    return {"pid": os.getpid(), "frames": clip.num_frames,
            "video_seconds": plan.info["probe"].duration_seconds, "stages": stages,
            "peak": peak_rss_mb(), "start": _START_RSS}


def decode_video(path: str, fps, max_frames, plan_kind: str = "seek", decoder: str = "pyav",
                 threads: int = 1):
    """(clip frames, plan, seconds) for one video, timed from probe to the last frame."""
    import numpy as np

    from mmstream.config import SamplingConfig
    from mmstream.media.backends.pyav import PyAVBackend

    sampling = SamplingConfig(fps=fps, max_frames=max_frames, strategy="t2vid" if max_frames else "none",
                              decoder=decoder, decoder_threads=threads)
    ref = MediaRef("video", os.path.basename(path), root=os.path.dirname(os.path.abspath(path)))
    from mmstream.media.backends import get_backend

    get_backend(decoder)  # its imports (torch for torchcodec) are start-up, not decoding
    t0 = time.perf_counter()
    plan = plan_media(ref, sampling)
    if plan_kind == "sequential":
        info = plan.info["probe"]
        got = PyAVBackend(seek=False, skip_nonref=False).read(plan.path, info, sorted(set(plan.indices)),
                                                               (plan.width, plan.height), threads)
        frames = np.stack([got[i] for i in plan.indices])
    else:
        frames = decode_media(plan, sampling).frames
    return frames, plan, time.perf_counter() - t0


def run_video(args) -> dict:
    import hashlib

    max_frames = None if args.max_frames in (None, "none") else int(args.max_frames)
    cpu0, main0 = cpu_seconds(), main_cpu_seconds()
    start = proc_status_mb("VmRSS")
    timing.enable()
    frames, plan, seconds = decode_video(args.video, args.fps, max_frames, args.plan, args.decoder, args.threads)
    snap = timing.snapshot()
    sha = hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()
    return make_result(f"decode_only_video:{args.plan}", args.video, 0, wall=seconds, first=seconds, samples=1,
                       frames=len(frames), video_seconds=plan.info["probe"].duration_seconds,
                       stages=snap["stages"], peaks=[peak_rss_mb()], starts=[start], cpu=cpu_seconds() - cpu0,
                       main_cpu=main_cpu_seconds() - main0,
                       extra={"decoder": args.decoder, "plan": args.plan, "frames_sha1": sha,
                              "source_indices": list(plan.indices), "stream_frames": plan.info["probe"].num_frames,
                              "decoded_frames": int(snap["counts"].get("decoded_frames", 0)) or None})


def _decode_share(items, queue) -> None:
    for item in items:
        queue.put(decode_one(item))


def run(args) -> dict:
    if args.video:
        return run_video(args)
    items = video_items(args.config, ordered=args.shard == "static")
    cpu0, main0 = cpu_seconds(), main_cpu_seconds()
    t0 = time.perf_counter()
    first = None
    results = []
    if args.workers > 0 and args.shard == "static":
        # the stream's split: worker w of N takes positions w, w + N, ... of the shuffled order
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_decode_share, args=(items[w::args.workers], queue))
                 for w in range(args.workers)]
        for proc in procs:
            proc.start()
        for _ in items:
            results.append(queue.get())
            first = first if first is not None else time.perf_counter() - t0
        for proc in procs:
            proc.join()
    elif args.workers > 0:
        with mp.get_context("fork").Pool(args.workers) as pool:
            for r in pool.imap_unordered(decode_one, items, chunksize=1):
                first = first if first is not None else time.perf_counter() - t0
                results.append(r)
            pool.close()
            pool.join()
    else:
        for item in items:
            results.append(decode_one(item))
            first = first if first is not None else time.perf_counter() - t0
    wall = time.perf_counter() - t0
    main_cpu = main_cpu_seconds() - main0
    stages: Counter = Counter()
    busy: Counter = Counter()
    peaks: dict = {}
    starts: dict = {}
    for r in results:
        stages.update(r["stages"])
        busy[r["pid"]] += sum(r["stages"].values())
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0.0), r["peak"])
        starts.setdefault(r["pid"], r["start"])
    name = "decode_only" if args.shard == "dynamic" else "decode_only_static"
    return make_result(name, args.config, args.workers, wall=wall, first=first, samples=len(results),
                       frames=sum(r["frames"] for r in results),
                       video_seconds=sum(r["video_seconds"] for r in results), stages=stages,
                       peaks=list(peaks.values()), starts=list(starts.values()), busy=list(busy.values()),
                       cpu=cpu_seconds() - cpu0, main_cpu=main_cpu)


if __name__ == "__main__":
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--video", default=None, help="time one video instead of a config (give CONFIG as -)")
    p.add_argument("--fps", type=float, default=1.0, help="with --video: sampling rate (default 1)")
    p.add_argument("--max-frames", default="none", help="with --video: cap (T2Vid rule) or none (default)")
    p.add_argument("--plan", choices=("seek", "sequential"), default="seek", help="with --video: decode plan")
    p.add_argument("--decoder", choices=("pyav", "decord", "torchcodec"), default="pyav", help="with --video: backend")
    p.add_argument("--threads", type=int, default=1, help="with --video: decoder threads (default 1)")
    p.add_argument("--shard", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic: a free worker takes the next video (the bound); static: the stream's "
                        "split, worker w taking every Nth record of the shuffled order")
    sys.exit(main(run, p.parse_args()))
