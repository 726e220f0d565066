"""Hand-made Samples and a stand-in dataset for the sink tests (no decoding).

    items = [video_sample("src-00000000", n_frames=3), Drop("src-00000001", "src", "decode_error")]
    run_cache(cache_config("megatron"), out, workers=0, dataset_factory=FakeDataset.factory(items))
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from mmstream.config import load_config
from mmstream.types import Clip, Drop, Record, Sample, Turn

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def frames_of(n: int, color=RED, size=(48, 32), channels: int = 3) -> np.ndarray:
    """``n`` solid frames of ``color`` (w x h ``size``); 4 channels add opaque alpha."""
    w, h = size
    out = np.zeros((n, h, w, channels), np.uint8)
    out[..., :3] = color
    if channels == 4:
        out[..., 3] = 255
    return out


def clip(kind: str, frames: np.ndarray, fps: Optional[float] = 1.0) -> Clip:
    t = len(frames)
    return Clip(kind, f"/media/{kind}.bin", frames, np.arange(t, dtype=np.float64), np.arange(t, dtype=np.int64),
                fps=fps)


def _record(key: str, turns: list[Turn]) -> Record:
    return Record(key, key.rsplit("-", 1)[0], turns, [], index=int(key.rsplit("-", 1)[1]))


def video_sample(key: str, n_frames: int = 4, *, color=RED, sgt: float = 2.0, fmt: str = "megatron",
                 channels: int = 3) -> Sample:
    """One video + question/answer, with the model record of ``fmt``."""
    c = clip("video", frames_of(n_frames, color, channels=channels))
    rec = _record(key, [Turn("user", "<video>\nWhat is red?"), Turn("assistant", "The frame.")])
    return Sample(key, rec.source, rec, [c], model_record=model_record(key, [c], fmt, sgt=[sgt]))


def image_sample(key: str, *, color=BLUE, channels: int = 3, fmt: str = "megatron") -> Sample:
    c = clip("image", frames_of(1, color, channels=channels), fps=None)
    rec = _record(key, [Turn("user", "<image>\nColour?"), Turn("assistant", "Blue.")])
    return Sample(key, rec.source, rec, [c], model_record=model_record(key, [c], fmt))


def mixed_sample(key: str, *, sgt: float = 1.0, fmt: str = "megatron") -> Sample:
    """An image and a 2-frame video in one sample."""
    clips = [clip("image", frames_of(1, (0, 255, 0))), clip("video", frames_of(2, RED))]
    rec = _record(key, [Turn("user", "<image>\n<video>\nCompare."), Turn("assistant", "Green, then red.")])
    return Sample(key, rec.source, rec, clips, model_record=model_record(key, clips, fmt, sgt=[sgt]))


def model_record(key: str, clips: Sequence[Clip], fmt: str, sgt: Sequence[float] = ()) -> dict[str, Any]:
    if fmt == "megatron":
        tags = "".join("<image>\n" if c.kind == "image" else "<video>\n" for c in clips)
        return {"conversations": [{"from": "human", "value": tags + "Question?"}, {"from": "gpt", "value": "Answer."}],
                "second_per_grid_ts": list(sgt)}
    n = sum(c.num_frames for c in clips)
    image = {f"<image_{i:02d}>": f"{key}/{i:05d}.jpg" for i in range(n)}
    head = "".join(f"<image_{i:02d}>\n" for i in range(n))
    return {"id": key, "image": image,
            "conversations": [{"role": "user", "content": head + "Question?"}, {"role": "assistant", "content": "Answer."}]}


MODEL_FOR = {"megatron": "qwen2-vl", "minicpmv": "minicpmv-2.6", "idefics3": "idefics3"}


def cache_config(fmt: str = "megatron", layout: str = "wds", maxcount: int = 2, **options: Any):
    return load_config({"sources": [{"name": "src", "annotations": "/nonexistent/ann.json"}],
                        "model": {"name": MODEL_FOR[fmt]},
                        "output": {"format": fmt, "layout": layout, "maxcount": maxcount, "options": options}})


class FakeDataset:
    """Yields the given items the way StreamingDataset would: records split by index
    over ranks, then over DataLoader workers, ``skip_keys`` skipped, Drops only with ``emit_drops``. ``fail_after``:
    raise after yielding that many items (a crash mid-run)."""

    calls: list[dict[str, Any]] = []

    def __init__(self, items, config=None, *, emit_drops=False, rank=None, world_size=None, skip_keys=None,
                 fail_after: Optional[int] = None):
        self.items = list(items)
        self.emit_drops = emit_drops
        self.rank = rank or 0
        self.world_size = world_size or 1
        self.skip_keys = frozenset(skip_keys or ())
        self.fail_after = fail_after
        FakeDataset.calls.append({"rank": self.rank, "world_size": self.world_size, "skip_keys": self.skip_keys})

    @classmethod
    def factory(cls, items, fail_after: Optional[int] = None):
        return lambda config, **kw: cls(items, config, fail_after=fail_after, **kw)

    def __iter__(self):
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        n = 0
        for i, item in enumerate(self.items):
            if i % self.world_size != self.rank or item.key in self.skip_keys:
                continue
            if (i // self.world_size) % workers != worker:
                continue
            if isinstance(item, Drop) and not self.emit_drops:
                continue
            if self.fail_after is not None and n >= self.fail_after:
                raise RuntimeError("simulated crash")
            n += 1
            yield item


def drop(key: str, reason: str = "decode_error") -> Drop:
    return Drop(key, key.rsplit("-", 1)[0], reason)
