"""The Qwen2-VL / Qwen2.5-VL processor, resizing exactly as mmstream's token counts assume.

    processor = make_processor("qwen2-vl", tokenizer)          # or AutoProcessor.from_pretrained(checkpoint)
    images_kwargs, videos_kwargs = resize_kwargs(model)       # model: mmstream's Qwen model object
    processor(text=..., images=..., videos=..., images_kwargs=images_kwargs, videos_kwargs=videos_kwargs)

mmstream counts an image's tokens with ``model.options`` ``min_pixels``/``max_pixels`` and a
video frame's with ``video_min_pixels``/``video_max_pixels`` (and ``video_total_pixels``,
the qwen-vl-utils per-frame share of a total budget). :func:`resize_kwargs` turns those
into the processor's own call arguments (``size`` = ``{"shortest_edge", "longest_edge"}``,
``cap_pixels_per_frame`` + ``max_video_tokens``), which take precedence over whatever
the checkpoint's ``preprocessor_config.json`` says, so a hub processor resizes the way
the stream counted. Frames are already sampled by mmstream: ``do_sample_frames`` is off.
"""
from __future__ import annotations

from typing import Any

from mmstream.errors import ConfigError
from mmstream.models.qwen2vl import FACTOR

#: qwen-vl-utils / transformers: the total pixel budget is 90% of max_video_tokens tokens' pixels.
BUDGET_SHARE = 0.9


def make_processor(family: str, tokenizer: Any):
    """``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` from a tokenizer and the default image
    and video processors (what a checkpoint without a processor folder would use)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if family == "qwen2-vl":
        from transformers import Qwen2VLProcessor as cls
    elif family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor as cls
    else:
        raise ConfigError(f"make_processor: family {family!r} is not qwen2-vl or qwen2.5-vl")
    return cls(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
               video_processor=Qwen2VLVideoProcessor(cap_pixels_per_frame=False))


def max_video_tokens(total_pixels: int) -> int:
    """The processor's ``max_video_tokens`` whose budget ``int(tokens x 28 x 28 x 0.9)`` is
    exactly ``total_pixels`` (:class:`ConfigError` when no whole number of tokens gives it)."""
    tokens = round(total_pixels / (FACTOR * FACTOR * BUDGET_SHARE))
    for t in (tokens - 1, tokens, tokens + 1):
        if t > 0 and int(t * FACTOR * FACTOR * BUDGET_SHARE) == total_pixels:
            return t
    raise ConfigError(f"model.options.video_total_pixels: {total_pixels} is not int(N x 28 x 28 x 0.9) for a whole "
                      f"N, so transformers' video processor (max_video_tokens) cannot apply the same budget; "
                      f"nearest: {int(tokens * FACTOR * FACTOR * BUDGET_SHARE)} (N = {tokens})")


def resize_kwargs(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(images_kwargs, videos_kwargs) for a processor call, from mmstream's model options."""
    o = model.options
    images = {"size": {"shortest_edge": o["min_pixels"], "longest_edge": o["max_pixels"]}}
    videos: dict[str, Any] = {"size": {"shortest_edge": o["video_min_pixels"], "longest_edge": o["video_max_pixels"]},
                              "do_sample_frames": False, "cap_pixels_per_frame": False}
    if o["video_total_pixels"] is not None:
        videos["cap_pixels_per_frame"] = True
        videos["max_video_tokens"] = max_video_tokens(int(o["video_total_pixels"]))
    return images, videos


__all__ = ["make_processor", "resize_kwargs", "max_video_tokens"]
