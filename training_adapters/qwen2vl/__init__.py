"""Qwen2-VL / Qwen2.5-VL glue: a collator for packed samples (see :mod:`.collator`)."""
from .collator import Qwen2VLPackCollator, mrope_position_ids

__all__ = ["Qwen2VLPackCollator", "mrope_position_ids"]
