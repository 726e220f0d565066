"""Test oracle: Pai-Megatron-Patch's frame extraction and converter, written from their
documented behaviour (our code, not theirs), with the library they use (OpenCV).

- ``build_llava_frame_dataset.py --time-interval T``: opens the video with
  ``cv2.VideoCapture``, takes ``fps = CAP_PROP_FPS`` (a float: the stream's average frame
  rate, checked with OpenCV 4.14 and 5.0 on constant and variable-rate MP4 and MKV),
  reads every frame in order and keeps frame ``i`` (0-based) when
  ``i % max(1, int(fps * T)) == 0``, saved with ``cv2.imwrite`` as ``frame_{i:06d}.jpg`` in
  the folder named as the video less its extension; then writes ``<folder>.json`` =
  ``{"fps": str(fps / interval)}`` (Python's float text: ``"2.0833333333333335"``).
  ``ext="png"`` saves lossless frames instead (not Pai's choice: for pixel comparisons).
- ``convert_custom_dataset_to_wds_chatml.py``: takes every file of the folder in sorted
  name order, less the last of an odd count; ``fps = float(json["fps"])``, 2.0 without the
  JSON; ``second_per_grid_ts = 1 / fps``.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
from PIL import Image


def pai_extract(video: str, time_interval: float = 0.5, ext: str = "jpg") -> dict:
    """Write Pai's frame folder and fps JSON beside ``video``; returns
    ``{"folder", "fps", "interval", "fps_text", "kept": [source frame index, ...]}``."""
    folder = os.path.splitext(video)[0]
    os.makedirs(folder, exist_ok=True)
    cap = cv2.VideoCapture(video)
    assert cap.isOpened(), video
    fps = cap.get(cv2.CAP_PROP_FPS)
    interval = max(1, int(fps * time_interval))
    kept, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % interval == 0:
            cv2.imwrite(os.path.join(folder, f"frame_{i:06d}.{ext}"), frame)
            kept.append(i)
        i += 1
    cap.release()
    fps_text = str(fps / interval)
    with open(folder + ".json", "w") as f:
        json.dump({"fps": fps_text}, f)
    return {"folder": folder, "fps": fps, "interval": interval, "fps_text": fps_text, "kept": kept}


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


def rgb_of(path: str) -> np.ndarray:
    """A saved frame as RGB (what the converter's ``cv2.imread`` holds, channels in order)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def counter_of(path: str) -> int:
    """The frame counter drawn into a saved frame."""
    from mmstream.synth import read_counter

    return read_counter(rgb_of(path))


def pai_config(root, names, **sampling):
    """The shipped Pai recipe over ``names`` (``<name>.mp4`` under ``root``), one record each,
    visual counts only (no tokenizer), unshuffled; ``sampling`` overrides."""
    from mmstream.config import load_config

    cfg = load_config("configs/qwen2vl_megatron.yaml").to_dict()
    cfg.pop("base_dir")
    records = [{"id": n, "conversations": [{"from": "human", "value": "<video>\nWhat is shown?"},
                                          {"from": "gpt", "value": "Numbers."}], "videos": [f"{n}.mp4"]}
               for n in names]
    ann = root / f"ann_{'_'.join(names)}.json"
    ann.write_text(json.dumps(records))
    cfg["sources"] = [{"name": "s", "format": "sharegpt", "annotations": str(ann), "media_root": str(root)}]
    cfg["model"].update(tokenizer=None, token_count="t2vid")  # visual counts only: no tokenizer needed here
    cfg["sampling"].update(decode_timeout=None, **sampling)
    cfg["loader"]["shuffle"] = False
    return cfg
