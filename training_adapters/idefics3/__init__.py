"""Idefics3 finetuning from mmstream output (see :mod:`.collator`)."""
from .collator import (BAD_EXAMPLE, IGNORE_INDEX, IMAGE_TRUNCATED, PROCESSOR_ERROR, Idefics3Collator,
                       Idefics3Dataset, example_from_item, to_example, to_messages)

__all__ = ["Idefics3Collator", "Idefics3Dataset", "IGNORE_INDEX", "example_from_item", "to_example", "to_messages",
           "BAD_EXAMPLE", "PROCESSOR_ERROR", "IMAGE_TRUNCATED"]
