"""Idefics3 finetuning from mmstream output (see :mod:`.collator`)."""
from .collator import IGNORE_INDEX, Idefics3Collator, Idefics3Dataset, example_from_item, to_messages

__all__ = ["Idefics3Collator", "Idefics3Dataset", "IGNORE_INDEX", "example_from_item", "to_messages"]
