"""mRoPE position ids from transformers' own ``get_rope_index``, in a DataLoader worker,
without the model's weights.

    rope = RopeIndex(config)          # a Qwen2VLConfig / Qwen2_5_VLConfig (or the checkpoint's folder)
    position_ids = rope(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
                        second_per_grid_ts=None, attention_mask=None)     # [3, B, L]

``get_rope_index`` is a method of ``Qwen2VLModel`` / ``Qwen2_5_VLModel`` that reads only the
config (the vision tower's ``spatial_merge_size``, Qwen2.5-VL's ``tokens_per_second``).
``RopeIndex`` builds that model object once, on PyTorch's ``meta`` device (no weights are
allocated: about 0.1-0.4 s for a 7B config; forked DataLoader workers inherit it), and
calls it, so the position ids are the model's own, not a re-implementation.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch


def model_classes(config: Any) -> tuple[type, type]:
    """(ForConditionalGeneration class, base model class) of a Qwen2-VL / Qwen2.5-VL config."""
    kind = getattr(config, "model_type", None)
    if kind == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        return Qwen2VLForConditionalGeneration, Qwen2VLModel
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

        return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel
    raise ValueError(f"not a Qwen2-VL / Qwen2.5-VL config (model_type {kind!r})")


def load_config(config: Any) -> Any:
    """A config object, or a checkpoint folder / hub name to read one from."""
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(config))
    return config


class RopeIndex:
    """Callable: transformers' ``get_rope_index`` for this config (see the module docstring)."""

    def __init__(self, config: Any):
        self.config = load_config(config)
        self.family = "qwen2.5-vl" if model_classes(self.config)[1].__name__.startswith("Qwen2_5") else "qwen2-vl"
        self._model = None
        _ = self.model  # built here, so forked workers inherit it (weightless: nothing to share badly)

    def __getstate__(self):  # pickled (a spawned worker): rebuilt there on first use
        return {**self.__dict__, "_model": None}

    @property
    def model(self):
        if self._model is None:
            base = model_classes(self.config)[1]
            with torch.device("meta"):
                self._model = base(self.config)
        return self._model

    def __call__(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                 image_grid_thw: Optional[torch.Tensor] = None, video_grid_thw: Optional[torch.Tensor] = None,
                 second_per_grid_ts: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.family == "qwen2.5-vl" and second_per_grid_ts is not None:
            kwargs["second_per_grid_ts"] = second_per_grid_ts
        position_ids, _ = self.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)
        return position_ids


__all__ = ["RopeIndex", "model_classes", "load_config"]
