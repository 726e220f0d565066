"""Record what the real upstream processors compute, for mmstream's parity tests.

    python tests/reference/make_processor_reference.py        # writes tests/reference/processors.json

It was run once, when transformers' Qwen2-VL video processor and qwen-vl-utils (they need
torchvision) did not import beside the torch mmstream's tests then ran on, in a side
environment (``torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 qwen-vl-utils==0.0.14
decord==0.6.0``, this repository on ``PYTHONPATH``), and records, for every case, the
inputs and the processor's answer. The project's environment now has torchvision, so
``tests/test_processor_parity.py`` asks the processors live and keeps this recording as a
second check: mmstream against it on every case, the live processors against it too (a
change upstream then shows as a difference from the recording).

Cases: frame sizes (landscape, portrait, square, tiny) x frame counts (1, 2, 7, 8, 24, 33)
through ``Qwen2VLVideoProcessor`` (its video limits; Pai's image limits; the per-frame cap
of a total-pixel budget), and clips decoded by ``qwen_vl_utils.fetch_video`` (its frame
count and frame size, ``total_pixels`` included).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

SIZES = [(320, 240), (640, 360), (1280, 720), (360, 640), (448, 448), (1920, 1080), (100, 60), (854, 480)]
FRAME_COUNTS = [1, 2, 7, 8, 24, 33]
PAI = {"min_pixels": 56 * 56, "max_pixels": 14 * 14 * 4 * 1280}  # the image limits Pai's trainer uses on frames
VIDEO_SETTINGS = {
    "video_defaults": {},
    "pai_image_limits": {"size": {"shortest_edge": PAI["min_pixels"], "longest_edge": PAI["max_pixels"]}},
    "total_budget": {"cap_pixels_per_frame": True, "max_video_tokens": 2000},
}
# clips for fetch_video: (width, height, fps, frames) and the request's extra keys
CLIPS = [(320, 240, "25", 50), (640, 360, "25", 250), (1280, 720, "30", 120), (360, 640, "24", 96),
         (320, 240, "25", 10)]
REQUESTS = {"fps2": {"fps": 2.0}, "fps2_budget": {"fps": 2.0, "total_pixels": 20 * 28 * 28 * 8},
            "fps1_max8": {"fps": 1.0, "max_frames": 8}}


def video_cases() -> list[dict]:
    import numpy as np
    from transformers import Qwen2VLVideoProcessor

    out = []
    for name, kwargs in VIDEO_SETTINGS.items():
        proc = Qwen2VLVideoProcessor(**kwargs)
        for w, h in SIZES:
            for t in FRAME_COUNTS:
                video = np.zeros((t, h, w, 3), np.uint8)
                grid = proc(videos=[video], return_tensors="np")["video_grid_thw"][0].tolist()
                out.append({"setting": name, "kwargs": kwargs, "width": w, "height": h, "frames": t, "grid_thw": grid})
    return out


def fetch_video_cases(folder: str) -> list[dict]:
    os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
    from qwen_vl_utils import fetch_video

    from mmstream.synth import encode_counter_video

    out = []
    for w, h, fps, n in CLIPS:
        path = encode_counter_video(os.path.join(folder, f"c{w}x{h}_{n}.mp4"), num_frames=n, fps=fps, size=(w, h))
        for name, extra in REQUESTS.items():
            video, sample_fps = fetch_video({"video": path, **extra}, return_video_sample_fps=True)
            t, _, rh, rw = video.shape
            out.append({"clip": {"width": w, "height": h, "fps": fps, "frames": n}, "request": name, "extra": extra,
                        "nframes": int(t), "resized": [int(rh), int(rw)], "sample_fps": float(sample_fps)})
    return out


def main() -> int:
    import importlib.metadata as md

    with tempfile.TemporaryDirectory() as tmp:
        ref = {"versions": {p: md.version(p) for p in ("transformers", "torch", "torchvision", "qwen-vl-utils",
                                                     "decord")},
               "video_processor": video_cases(), "fetch_video": fetch_video_cases(tmp)}
    with open(os.path.join(HERE, "processors.json"), "w") as f:
        json.dump(ref, f, indent=0)
    print(f"{len(ref['video_processor'])} video-processor cases, {len(ref['fetch_video'])} fetch_video cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
