"""Collate a pack of Qwen2-VL / Qwen2.5-VL samples into one sequence with per-sample 3-D
(mRoPE) position ids and the sequence boundaries a varlen attention kernel needs.

    collate = Qwen2VLPackCollator(tokenizer, model)         # model: mmstream's Qwen2-VL model object
    batch = collate(pack)                                   # a mmstream.pack.Pack
    batch["input_ids"]      # [1, L]: the samples' templated token ids, back to back
    batch["position_ids"]   # [3, 1, L]: each sample's own mRoPE ids, starting again at 0
    batch["cu_seqlens"]     # [n + 1]: sample i is tokens cu_seqlens[i]:cu_seqlens[i + 1]
    batch["image_grid_thw"], batch["video_grid_thw"]        # [k, 3] each, in sequence order

Packing several samples into one sequence must not let their positions run on: each
sample's position ids are what the model computes for it alone (transformers'
``get_rope_index``): text tokens count up by one; the vision tokens of an image or video
(grid t x h x w, after the 2 x 2 merge h/2 x w/2) take (start + temporal index x
interval, start + row, start + column), where the interval is 1 for Qwen2-VL and
``tokens_per_second x second_per_grid_t`` for Qwen2.5-VL videos; after a vision span the
running position moves on by max(h, w) / 2. Frames are not turned into pixel values
here (that is the image/video processor's job on ``batch["frames"]``).
"""
from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import numpy as np

from mmstream.models.base import media_shapes
from mmstream.models.qwen2vl import IMAGE_PAD, MERGE_SIZE, VIDEO_PAD

TEXT, IMAGE, VIDEO = 0, 1, 2
#: ``vision_config.tokens_per_second`` of the released Qwen2.5-VL checkpoints (transformers' default is 4:
#: pass the checkpoint's own value).
TOKENS_PER_SECOND = 2


def mrope_position_ids(token_types: Sequence[int], image_grids: Sequence[Sequence[int]],
                       video_grids: Sequence[Sequence[int]], second_per_grid_ts: Optional[Sequence[float]] = None,
                       tokens_per_second: Optional[float] = None, merge: int = MERGE_SIZE) -> np.ndarray:
    """``[3, L]`` position ids of one sample from its token types (0 text, 1 image pad,
    2 video pad) and grids; ``tokens_per_second`` set (Qwen2.5-VL) spaces a video's
    temporal ids by ``tokens_per_second x second_per_grid_ts[i]``."""
    grids = {IMAGE: iter(image_grids), VIDEO: iter(video_grids)}
    spg = iter(second_per_grid_ts or [])
    parts, pos = [], 0
    for kind, run in itertools.groupby(token_types):
        n = len(list(run))
        if kind == TEXT:
            parts.append(np.broadcast_to(np.arange(pos, pos + n), (3, n)))
            pos += n
            continue
        t, h, w = next(grids[kind])
        h, w = h // merge, w // merge
        interval = 1.0
        if kind == VIDEO and tokens_per_second is not None:
            interval = tokens_per_second * float(next(spg))
        tt = (np.arange(t) * interval).astype(np.int64)  # truncated, as torch's .long() does
        T, H, W = np.meshgrid(tt, np.arange(h), np.arange(w), indexing="ij")
        ids = np.stack([T.ravel() + pos, H.ravel() + pos, W.ravel() + pos])
        if ids.shape[1] != n:
            raise ValueError(f"a vision span of {n} tokens for a grid of {t}x{h}x{w}")
        parts.append(ids)
        pos += max(h, w)
    return np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)


class Qwen2VLPackCollator:
    """Packs (or single samples) -> one sequence: ids, mRoPE ids, boundaries, grids."""

    def __init__(self, tokenizer, model, tokens_per_second: float = TOKENS_PER_SECOND):
        self.tokenizer = tokenizer
        self.model = model
        self.image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_pad = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.tokens_per_second = tokens_per_second if model.name == "qwen2.5-vl" else None

    def encode(self, sample) -> dict[str, Any]:
        """One sample alone: its ids, token types, grids and position ids."""
        shapes = media_shapes(sample.clips)
        ids = self.model.template_ids(sample.model_record, shapes)
        types = [IMAGE if i == self.image_pad else VIDEO if i == self.video_pad else TEXT for i in ids]
        grids = [(s.kind, self.model.grid_thw(s.kind, s.num_frames, s.width, s.height)) for s in shapes]
        images = [list(g) for k, g in grids if k == "image"]
        videos = [list(g) for k, g in grids if k != "image"]
        spg = sample.model_record.get("second_per_grid_ts", [])
        if self.model.options["second_per_grid"] == "pai":  # Pai stores 1/fps; the model's interval is 2/fps
            spg = [2 * x for x in spg]
        pos = mrope_position_ids(types, images, videos, spg, self.tokens_per_second)
        return {"input_ids": ids, "position_ids": pos, "image_grid_thw": images, "video_grid_thw": videos,
                "token_types": types}

    def __call__(self, pack) -> dict[str, Any]:
        samples = pack.samples if hasattr(pack, "samples") else [pack]
        parts = [self.encode(s) for s in samples]
        lengths = [len(p["input_ids"]) for p in parts]
        return {
            "input_ids": np.asarray([sum((p["input_ids"] for p in parts), [])], np.int64),
            "position_ids": np.concatenate([p["position_ids"] for p in parts], axis=1)[:, None, :],
            "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "image_grid_thw": np.asarray([g for p in parts for g in p["image_grid_thw"]], np.int64).reshape(-1, 3),
            "video_grid_thw": np.asarray([g for p in parts for g in p["video_grid_thw"]], np.int64).reshape(-1, 3),
            "frames": [c.frames for s in samples for c in s.clips],
            "keys": [s.key for s in samples],
        }
