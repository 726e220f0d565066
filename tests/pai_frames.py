"""Test oracle: Pai-Megatron-Patch's frame extraction and converter, written from their
documented behaviour (our code, not theirs).

- ``build_llava_frame_dataset.py --time-interval T``: reads every frame of the video in
  order; with ``fps`` the container's rate as OpenCV reports it (a float) it keeps frame
  ``i`` (0-based) when ``i % max(1, int(fps * T)) == 0``, saved as ``frame_{i:06d}.jpg`` in
  the folder named as the video less its extension, and writes ``<folder>.json`` =
  ``{"fps": str(fps / interval)}`` (Python's float text: ``"2.0833333333333335"``).
- ``convert_custom_dataset_to_wds_chatml.py``: takes every file of the folder in sorted
  name order, less the last of an odd count; ``fps = float(json["fps"])``, 2.0 without the
  JSON; ``second_per_grid_ts = 1 / fps``.
"""
from __future__ import annotations

import json
import os

import av
from PIL import Image


def pai_extract(video: str, time_interval: float = 0.5) -> dict:
    """Write Pai's frame folder and fps JSON beside ``video``; returns
    ``{"folder", "interval", "fps_text", "kept": [source frame index, ...]}``."""
    folder = os.path.splitext(video)[0]
    os.makedirs(folder, exist_ok=True)
    kept = []
    with av.open(video) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)  # what OpenCV's CAP_PROP_FPS reports for these files
        interval = max(1, int(fps * time_interval))
        for i, frame in enumerate(container.decode(stream)):
            if i % interval == 0:
                frame.to_image().save(os.path.join(folder, f"frame_{i:06d}.jpg"), quality=95)
                kept.append(i)
    fps_text = str(fps / interval)
    with open(folder + ".json", "w") as f:
        json.dump({"fps": fps_text}, f)
    return {"folder": folder, "interval": interval, "fps_text": fps_text, "kept": kept}


def pai_convert(folder: str) -> tuple[list[str], float]:
    """What Pai's converter stores for one frame folder: the frame files (sorted, an odd
    count less its last) and ``second_per_grid_ts``."""
    names = sorted(os.listdir(folder))
    if len(names) % 2 == 1:
        names = names[:-1]
    fps = 2.0
    if os.path.exists(folder + ".json"):
        with open(folder + ".json") as f:
            fps = float(json.load(f)["fps"])
    return [os.path.join(folder, n) for n in names], 1 / fps


def counter_of(path: str) -> int:
    """The frame counter drawn into a saved frame."""
    import numpy as np

    from mmstream.synth import read_counter

    with Image.open(path) as im:
        return read_counter(np.asarray(im.convert("RGB")))
