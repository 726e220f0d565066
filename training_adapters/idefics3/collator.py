"""Idefics3 finetuning from mmstream output, the way T2Vid's Idefics3 finetune does it.

T2Vid's Idefics3 script reads the same JSON as MiniCPM-V (REFERENCE 6). Its collator
strips the ``<image_NN>`` tags, puts every image at the start of the first user
turn, renders the turns with the processor's chat template, and trains on
``input_ids`` with padding and image tokens masked to -100::

    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained("HuggingFaceM4/Idefics3-8B-Llama3",
                                              do_image_splitting=False)
    dataset = Idefics3Dataset("/data/cache")          # wds shards, data.json, or records
    collator = Idefics3Collator(processor)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collator)
    batch = next(iter(loader))   # input_ids, attention_mask, pixel_values, labels, ...
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Iterable, Optional, Union

import torch
import torch.utils.data

from mmstream.models.idefics3 import Idefics3

from ..minicpmv.dataset import MiniCPMVShards, open_images

#: Label value the loss ignores.
IGNORE_INDEX = -100


def to_messages(conversations: Sequence[dict[str, Any]], num_images: int) -> list[dict[str, Any]]:
    """T2Vid turns -> chat-template messages: ``<image_NN>`` tags (and the newline after
    each) stripped, every image at the start of the first user turn. The rule is
    mmstream's Idefics3 model's (:meth:`mmstream.models.idefics3.Idefics3.collator_view`),
    the same one its token counts use."""
    record = {"image": {f"<image_{i:02d}>": "" for i in range(num_images)}, "conversations": list(conversations)}
    return Idefics3.collator_view(record)["messages"]


def example_from_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item with ``images`` ({tag: PIL} or list) and ``conversations`` ->
    ``{"images": [PIL], "messages": [...]}``."""
    images = item.get("images") or []
    if isinstance(images, dict):
        images = list(images.values())
    out = {"images": list(images), "messages": to_messages(item["conversations"], len(images))}
    if "key" in item:
        out["key"] = item["key"]
    return out


class Idefics3Dataset(torch.utils.data.Dataset):
    """Examples ``{"images": [PIL RGB], "messages": [...]}`` from a cache folder of
    ``wds`` shards, a ``files``-layout JSON list (path), or a list of T2Vid records
    whose image paths exist."""

    def __init__(self, source: Union[str, os.PathLike, Sequence[dict[str, Any]]]):
        self._shards: Optional[MiniCPMVShards] = None
        self._records: Optional[list[dict[str, Any]]] = None
        self._root: Optional[str] = None
        if isinstance(source, (str, os.PathLike)) and str(source).endswith(".json"):
            with open(source, encoding="utf-8") as f:
                self._records = json.load(f)
            self._root = os.path.dirname(os.path.abspath(source))
        elif isinstance(source, (str, os.PathLike)):
            self._shards = MiniCPMVShards(source)
        else:
            self._records = list(source)

    def __len__(self) -> int:
        return len(self._shards) if self._shards is not None else len(self._records or [])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._shards is not None:
            return example_from_item(self._shards[i])
        record = self._records[i]
        return example_from_item({"images": open_images(record, self._root),
                                  "conversations": record["conversations"]})


class Idefics3Collator:
    """Examples -> a training batch with ``labels`` (padding and ``<image>`` tokens
    set to -100).

    ``mask_image_wrappers`` also masks the tokens around each image
    (``<fake_token_around_image>``, ``<global-img>``, ``<row_i_col_j>``).
    Examples may also be MiniCPM-V items (``images`` + ``conversations``).
    """

    def __init__(self, processor: Any, *, mask_image_wrappers: bool = False, **processor_kwargs: Any):
        self.processor = processor
        self.processor_kwargs = processor_kwargs
        tokenizer = processor.tokenizer
        self.image_token_id = _token_id(tokenizer, getattr(processor, "image_token", "<image>"))
        self.masked_ids = {self.image_token_id}
        if mask_image_wrappers:
            names = [getattr(processor, "fake_image_token", "<fake_token_around_image>"),
                     getattr(processor, "global_image_tag", "<global-img>")]
            names += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
            unk = getattr(tokenizer, "unk_token_id", None)
            self.masked_ids |= {t for t in (_token_id(tokenizer, n) for n in names) if t is not None and t != unk}

    def __call__(self, examples: Iterable[dict[str, Any]]) -> Any:
        examples = [e if "messages" in e else example_from_item(e) for e in examples]
        texts = [self.processor.apply_chat_template(e["messages"], add_generation_prompt=False, tokenize=False)
                 for e in examples]
        images = [list(e["images"]) for e in examples]
        kwargs = dict(return_tensors="pt", padding=True)
        kwargs.update(self.processor_kwargs)
        if any(images):
            batch = self.processor(text=texts, images=images, **kwargs)
        else:
            batch = self.processor(text=texts, **kwargs)
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        pad = getattr(self.processor.tokenizer, "pad_token_id", None)
        if pad is not None and "attention_mask" not in batch:
            labels[labels == pad] = IGNORE_INDEX
        for token_id in self.masked_ids:
            labels[labels == token_id] = IGNORE_INDEX
        batch["labels"] = labels
        return batch


def _token_id(tokenizer: Any, token: str) -> Optional[int]:
    ids = tokenizer.convert_tokens_to_ids([token])
    return int(ids[0]) if ids and ids[0] is not None else None
