"""One mmstream sample -> the Qwen2-VL processor's tensors, SFT labels, checked against
mmstream's own token count.

    encoder = SampleEncoder(processor, model)   # model: mmstream's Qwen model object (ds.model)
    enc = encoder(sample)     # input_ids, labels, mm_token_type_ids [L]; pixel_values, image_grid_thw, ...
                              # or SampleError(processor_error | processor_count_mismatch)

The text is the one mmstream counted: ``model.templated_text`` (the tokenizer's chat
template over mmstream's record, every medium expanded to its visual tokens). Each run of
``<|image_pad|>``/``<|video_pad|>`` goes back to one pad, and the processor expands it
again from the frames, which it resizes itself (:func:`.processor.resize_kwargs`). So
``input_ids`` are the processor's; the encoder then checks that each medium's pad run is
exactly mmstream's count for it, that the sequence is exactly ``sample.tokens["total"]``
long (``token_count: chat_template``) and, for Qwen2.5-VL, that ``second_per_grid_ts``
agrees with the record's. A sample that fails a check or that the processor rejects is a
:class:`SampleError`: the collator drops and counts it.

**Labels** follow Pai-Megatron-Patch's ChatML encoder and LLaMA-Factory's ``qwen2_vl``
template: every token of the system and user turns and each assistant header
(``<|im_start|>assistant\\n``) is -100; an answer's tokens are kept, with its end-of-turn
(``<|im_end|>`` and the newline after it). The header and end-of-turn strings are read
from the chat template itself (what it appends for ``add_generation_prompt`` and after
an assistant message), and tokens are assigned to answers by their character offsets.
"""
from __future__ import annotations

import itertools
import re
from typing import Any

import torch

from mmstream.errors import SampleError
from mmstream.models.base import VIDEO_KINDS, media_shapes
from mmstream.models.qwen2vl import IMAGE_PAD, VIDEO_PAD

from .processor import resize_kwargs

IGNORE_INDEX = -100
PROCESSOR_ERROR = "processor_error"  # the processor raised on this sample
COUNT_MISMATCH = "processor_count_mismatch"  # its tokens differ from mmstream's count
PAD_RUN = re.compile("(" + "|".join(re.escape(t) for t in (IMAGE_PAD, VIDEO_PAD)) + ")+")
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids
_SENTINEL = "MMSTREAM_ANSWER_SENTINEL"


def answer_markers(render) -> tuple[str, str]:
    """(header, end) the chat template writes before and after an assistant message,
    found by rendering a probe conversation with ``render(messages, add_generation_prompt)``."""
    user = [{"role": "user", "content": "Q"}]
    plain, prompted = render(user, False), render(user, True)
    full = render(user + [{"role": "assistant", "content": _SENTINEL}], False)
    header = prompted[len(plain):] if prompted.startswith(plain) else ""
    at = full.find(_SENTINEL)
    if not header or at < 0 or full[:at] != prompted:
        raise ValueError("the chat template's assistant turns cannot be located (need a generation prompt that "
                         "prefixes each assistant message); labels would be wrong")
    return header, full[at + len(_SENTINEL):]


def answer_spans(text: str, header: str, end: str) -> list[tuple[int, int]]:
    """Character spans of the answers (after each header, up to and including ``end``)."""
    spans, i = [], text.find(header)
    while i >= 0:
        start = i + len(header)
        stop = text.find(end, start) if end else -1
        stop = len(text) if stop < 0 else stop + len(end)
        spans.append((start, stop))
        i = text.find(header, stop)
    return spans


def labels_from_offsets(input_ids: torch.Tensor, offsets: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """``input_ids`` where a token starts inside an answer span, else -100."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    starts, stops = offsets[:, 0], offsets[:, 1]
    for a, b in spans:
        keep = (starts >= a) & (starts < b) & (stops > starts)
        labels[keep] = input_ids[keep]
    return labels


def media_runs(types: torch.Tensor) -> list[tuple[int, int]]:
    """(kind, length) of each run of image (1) or video (2) tokens, in order."""
    return [(k, len(list(g))) for k, g in itertools.groupby(types.tolist()) if k != TEXT]


class SampleEncoder:
    """Callable: a mmstream ``Sample`` -> dict of 1-D/2-D tensors for one sequence."""

    def __init__(self, processor: Any, model: Any):
        self.processor = processor
        self.model = model
        self.images_kwargs, self.videos_kwargs = resize_kwargs(model)
        self.family = model.name
        self.markers = answer_markers(lambda m, gen: model.tokenizer.apply_chat_template(
            m, tokenize=False, add_generation_prompt=gen))  # here: a template without them fails at start-up

    def __call__(self, sample: Any) -> dict[str, Any]:
        shapes = media_shapes(sample.clips)
        text = self.model.templated_text(sample.model_record, shapes)
        expected = [(VIDEO if s.kind in VIDEO_KINDS else IMAGE, self.model.media_tokens(s.kind, s.num_frames, s.width,
                                                                                         s.height)) for s in shapes]
        if any(n <= 0 for _, n in expected):
            raise SampleError(COUNT_MISMATCH, f"mmstream counts no visual token for a medium ({expected}); "
                                              "the processor gives every medium at least one", key=sample.key)
        images = [c.frames[0] for c in sample.clips if c.kind not in VIDEO_KINDS]
        videos = [c.frames for c in sample.clips if c.kind in VIDEO_KINDS]
        fps = [c.fps or self.model.options["default_fps"] for c in sample.clips if c.kind in VIDEO_KINDS]
        kwargs: dict[str, Any] = {"images_kwargs": self.images_kwargs, "return_tensors": "pt",
                                  "text_kwargs": {"return_offsets_mapping": True,
                                                  "add_special_tokens": bool(self.model.options["add_special_tokens"])}}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
            kwargs["videos_kwargs"] = dict(self.videos_kwargs, video_metadata=[
                {"total_num_frames": len(v), "fps": float(f)} for v, f in zip(videos, fps)])
        try:
            out = self.processor(text=[PAD_RUN.sub(lambda m: m.group(1), text)], **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the processor rejects is this sample's drop
            raise SampleError(PROCESSOR_ERROR, f"{type(exc).__name__}: {exc}", key=sample.key) from None
        ids, types = out["input_ids"][0], out["mm_token_type_ids"][0]
        runs = media_runs(types)
        if runs != expected:
            raise SampleError(COUNT_MISMATCH, f"processor placeholders {runs} != mmstream's {expected} "
                                              "(kind 1 image, 2 video; tokens)", key=sample.key)
        total = (sample.tokens or {}).get("total")
        if self.model.token_count == "chat_template" and total is not None and len(ids) != total:
            raise SampleError(COUNT_MISMATCH, f"processor sequence of {len(ids)} tokens != mmstream's {total}",
                              key=sample.key)
        enc: dict[str, Any] = {"input_ids": ids, "mm_token_type_ids": types, "key": sample.key,
                               "labels": labels_from_offsets(ids, out["offset_mapping"][0],
                                                             answer_spans(text, *self.markers))}
        for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            if name in out:
                enc[name] = out[name]
        if "second_per_grid_ts" in out:
            spg = torch.as_tensor(out["second_per_grid_ts"], dtype=torch.float32)
            self._check_seconds(sample, spg)
            enc["second_per_grid_ts"] = spg
        return enc

    def _check_seconds(self, sample: Any, spg: torch.Tensor) -> None:
        """The processor's 2/fps against the record's value (1/fps when ``second_per_grid: pai``)."""
        stored = (sample.model_record or {}).get("second_per_grid_ts")
        if stored is None:
            return
        scale = 2.0 if self.model.options["second_per_grid"] == "pai" else 1.0
        mine = torch.tensor([float(x) * scale for x in stored], dtype=torch.float32)
        if mine.shape != spg.shape or not torch.allclose(mine, spg, rtol=1e-5):
            raise SampleError(COUNT_MISMATCH, f"processor second_per_grid_ts {spg.tolist()} != the record's "
                                              f"{stored} (x{scale:g})", key=sample.key)


__all__ = ["SampleEncoder", "answer_markers", "answer_spans", "labels_from_offsets", "IGNORE_INDEX",
           "PROCESSOR_ERROR", "COUNT_MISMATCH"]
