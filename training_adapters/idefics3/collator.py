"""Idefics3 finetuning from mmstream output, the way T2Vid's Idefics3 finetune does it.

T2Vid's Idefics3 script reads the same JSON as MiniCPM-V (REFERENCE 6). Its collator
removes the ``<image_NN>`` tags and strips every turn, puts every image at the start of
the first user turn, renders the turns with the processor's chat template, **strips the
rendered text** (no newline after the last ``<end_of_utterance>``), lets the processor
tokenize it (padding, and truncation at ``max_length``) and trains on ``input_ids`` with
the pad and ``<image>`` ids masked to -100 (prompts are trained too)::

    processor = AutoProcessor.from_pretrained("HuggingFaceM4/Idefics3-8B-Llama3",
                                              do_image_splitting=False)
    collate = Idefics3Collator(processor, max_length=131072)   # T2Vid's finetune_ds.sh
    loader = StatefulDataLoader(StreamingDataset(cfg), batch_size=2, num_workers=2,
                                collate_fn=collate)            # the live stream, or:
    loader = DataLoader(Idefics3Dataset("/data/cache"), batch_size=2, collate_fn=collate)
    batch = next(iter(loader))  # input_ids, attention_mask, labels, pixel_values, pixel_attention_mask

Every tensor comes from the processor. A sample the processor rejects, or one whose
truncation would cut into its image tokens (the model would refuse the batch), is
dropped with a counted, logged reason, and the batch is made of the others; a batch with
nothing left is ``None`` (skip it). ``emit_drops=True`` adds ``batch["dropped"]``, a list
of :class:`mmstream.types.Drop` with the stream's own drops
(``StreamingDataset(cfg, emit_drops=True)``) among them; pop it before ``model(**batch)``
(a batch of drops alone is then just ``{"dropped": [...]}``)::

    for batch in loader:
        drops = batch.pop("dropped", []) if batch is not None else []
        if batch is None or "input_ids" not in batch:
            continue
        loss = model(**batch).loss
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import torch
import torch.utils.data

from mmstream.models.idefics3 import Idefics3, finish_text
from mmstream.types import Drop

from ..minicpmv.dataset import MiniCPMVShards, open_images, sample_to_item

log = logging.getLogger(__name__)

#: Label value the loss ignores.
IGNORE_INDEX = -100

# Drop reasons of the collator (counter names).
BAD_EXAMPLE = "bad_example"  # not an example, a MiniCPM-V item or a Sample with a model record
PROCESSOR_ERROR = "processor_error"  # the chat template or the processor raised on this sample
IMAGE_TRUNCATED = "image_truncated"  # max_length would cut into the sample's <image> tokens


def to_messages(conversations: Sequence[dict[str, Any]], num_images: int) -> list[dict[str, Any]]:
    """T2Vid turns -> chat-template messages: ``<image_NN>`` tags removed and every turn
    stripped, every image at the start of the first user turn. The rule is mmstream's
    Idefics3 model's (:meth:`mmstream.models.idefics3.Idefics3.collator_view`), the same
    one its token counts use."""
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


def to_example(item: Any) -> dict[str, Any]:
    """An example (``images`` + ``messages``), a MiniCPM-V item (``images`` +
    ``conversations``) or an mmstream Sample with a MiniCPM-V/Idefics3 model record."""
    if hasattr(item, "clips") and hasattr(item, "model_record"):
        item = sample_to_item(item)
    if not isinstance(item, dict):
        raise TypeError(f"expected an example dict or an mmstream Sample, got {type(item).__name__}")
    return item if "messages" in item else example_from_item(item)


@dataclass
class _Ready:
    """One sample on its way into the processor."""

    key: str
    source: str
    text: str
    images: list


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
    """Examples (or mmstream Samples and Drops) -> a training batch with ``labels``.

    ``strip_text`` (default true, T2Vid): strip the rendered conversation; false keeps
    the chat template's final newline, and trains it (TRL's Idefics3/SmolVLM SFT example).
    Keep it equal to the config's ``model.options.strip_text`` so the stream's
    ``chat_template`` token counts are the batch's sequence lengths.
    ``max_length``: truncate there as T2Vid does (its finetune passes 131072); None
    does not truncate. ``mask_image_wrappers`` also masks the tokens around each image
    (``<fake_token_around_image>``, ``<global-img>``, ``<row_i_col_j>``); T2Vid trains them.
    ``stats`` counts, per process, the samples kept and each drop reason.
    """

    def __init__(self, processor: Any, *, strip_text: bool = True, max_length: Optional[int] = None,
                 mask_image_wrappers: bool = False, emit_drops: bool = False, **processor_kwargs: Any):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {max_length}")
        self.processor = processor
        self.strip_text = strip_text
        self.max_length = max_length
        self.emit_drops = emit_drops
        self.processor_kwargs = processor_kwargs
        self.stats: Counter = Counter()
        tokenizer = processor.tokenizer
        # transformers 4.x holds these as AddedToken objects, 5.x as strings
        self.image_token_id = _token_id(tokenizer, str(getattr(processor, "image_token", "<image>")))
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.masked_ids = {self.image_token_id}
        if mask_image_wrappers:
            names = [str(getattr(processor, "fake_image_token", "<fake_token_around_image>")),
                     str(getattr(processor, "global_image_tag", "<global-img>"))]
            names += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
            unk = getattr(tokenizer, "unk_token_id", None)
            self.masked_ids |= {t for t in (_token_id(tokenizer, n) for n in names) if t is not None and t != unk}

    # -- one batch ---------------------------------------------------------------------
    def __call__(self, items: Iterable[Any]) -> Any:
        dropped: list[Drop] = []
        kept: list[_Ready] = []
        for n, item in enumerate(items):
            if isinstance(item, Drop):  # the stream's own drops (StreamingDataset(emit_drops=True))
                dropped.append(item)
                continue
            key, source = _key(item, n), str(getattr(item, "source", "") or "")
            try:
                example = to_example(item)
            except (TypeError, KeyError, ValueError) as exc:
                dropped.append(self._drop(key, source, BAD_EXAMPLE, exc))
                continue
            try:
                text = self.render(example["messages"])
            except Exception as exc:  # a template error is this sample's, not the run's
                dropped.append(self._drop(key, source, PROCESSOR_ERROR, exc))
                continue
            kept.append(_Ready(key, source, text, list(example["images"])))
        batch = self._encode(kept, dropped)
        for d in dropped:
            self.stats[d.reason] += 1
        if batch is None:
            return {"dropped": dropped} if self.emit_drops and dropped else None
        self.stats["kept"] += len(batch["input_ids"])
        batch["labels"] = self.labels(batch)
        if self.emit_drops:
            batch["dropped"] = dropped
        return batch

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The processor's chat template on the messages, stripped by T2Vid's rule."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        return finish_text(text, self.strip_text)

    def labels(self, batch: Any) -> torch.Tensor:
        """T2Vid's labels: the input ids with padding and ``<image>`` ids set to -100."""
        ids = batch["input_ids"]
        labels = ids.clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        if self.pad_token_id is not None:
            labels[ids == self.pad_token_id] = IGNORE_INDEX
        for token_id in self.masked_ids:
            labels[ids == token_id] = IGNORE_INDEX
        return labels

    # -- the processor, and what it rejects ----------------------------------------------
    def _process(self, kept: list[_Ready], truncate: bool) -> Any:
        kwargs: dict[str, Any] = dict(return_tensors="pt", padding=True)
        kwargs.update(self.processor_kwargs)
        if truncate:
            kwargs.update(truncation=True, max_length=self.max_length)
        texts = [r.text for r in kept]
        images = [r.images for r in kept]
        if any(images):
            return self.processor(text=texts, images=images, **kwargs)
        return self.processor(text=texts, **kwargs)

    def _encode(self, kept: list[_Ready], dropped: list[Drop]) -> Any:
        """The processor's batch of the samples it accepts (``dropped`` gets the rest)."""
        while kept:
            try:
                batch = self._process(kept, truncate=False)
            except Exception as exc:
                kept = self._isolate(kept, exc, dropped)
                continue
            cut = self._cut_images(batch)
            if cut:
                for i in cut:
                    dropped.append(self._drop(kept[i].key, kept[i].source, IMAGE_TRUNCATED,
                                              f"max_length {self.max_length} cuts into its <image> tokens"))
                kept = [k for i, k in enumerate(kept) if i not in cut]
                continue
            if self.max_length is not None and int(batch["input_ids"].shape[1]) > self.max_length:
                batch = self._process(kept, truncate=True)  # T2Vid's own call: text tails cut, images whole
            return batch
        return None

    def _isolate(self, kept: list[_Ready], exc: Exception, dropped: list[Drop]) -> list[_Ready]:
        """The batch failed: drop the samples that fail alone (all, if none does)."""
        if len(kept) == 1:
            dropped.append(self._drop(kept[0].key, kept[0].source, PROCESSOR_ERROR, exc))
            return []
        good = []
        for one in kept:
            try:
                self._process([one], truncate=False)
            except Exception as alone:
                dropped.append(self._drop(one.key, one.source, PROCESSOR_ERROR, alone))
            else:
                good.append(one)
        if len(good) == len(kept):  # each passes alone, not together
            for one in kept:
                dropped.append(self._drop(one.key, one.source, PROCESSOR_ERROR, f"the batch failed together: {exc}"))
            return []
        return good

    def _cut_images(self, batch: Any) -> set[int]:
        """Rows whose ``<image>`` tokens reach past ``max_length``."""
        if self.max_length is None or int(batch["input_ids"].shape[1]) <= self.max_length:
            return set()
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        cut = set()
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][mask[i] == 1]
            if bool((row[self.max_length:] == self.image_token_id).any()):
                cut.add(i)
        return cut

    def _drop(self, key: str, source: str, reason: str, why: Any) -> Drop:
        message = f"{type(why).__name__}: {why}" if isinstance(why, Exception) else str(why)
        log.log(logging.INFO if self.emit_drops else logging.WARNING, "dropped %s [%s]: %s", key, reason, message)
        return Drop(key=key, source=source, reason=reason, message=message)


def _key(item: Any, n: int) -> str:
    key = item.get("key") if isinstance(item, dict) else getattr(item, "key", None)
    return str(key) if key is not None else f"#{n}"


def _token_id(tokenizer: Any, token: str) -> Optional[int]:
    ids = tokenizer.convert_tokens_to_ids([token])
    return int(ids[0]) if ids and ids[0] is not None else None
