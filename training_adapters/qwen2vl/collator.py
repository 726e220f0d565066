"""Batches that ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``
take as they are, made in the DataLoader workers.

    ds = StreamingDataset(config)                                   # model: qwen2-vl | qwen2.5-vl, chat_template
    collate = Qwen2VLCollator(processor, ds.model, hf_config)       # hf_config: the checkpoint's config (or folder)
    loader = StatefulDataLoader(ds, batch_size=4, num_workers=4, collate_fn=collate)   # padded batches
    for batch in loader:
        if not batch["keys"]: continue                              # every sample of it was dropped
        loss = model(**model_inputs(batch)).loss

With ``loader.pack`` set, use ``batch_size=None``: each ``Pack`` becomes one packed sequence.

**Padded** (a list of samples): ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``,
right-padded (the training convention; left padding is for batched generation) with the
tokenizer's pad token, 0 and -100; ``position_ids`` ``[3, B, L]`` from transformers'
``get_rope_index`` with the attention mask, as the model would compute them itself.

**Packed** (a ``mmstream.pack.Pack``): one sequence ``[1, L]``, no ``attention_mask``, and
``position_ids`` ``[4, 1, L]``: row 0 is each sample's own text position (0, 1, 2, ...,
starting again at each sample), rows 1-3 each sample's mRoPE ids computed on it alone.
That is transformers' own packed format for Qwen2-VL: with no attention mask and no
cache, the text model reads the boundaries from row 0 and builds a block-diagonal causal
mask (sdpa, eager, flex) or passes them to flash-attention's varlen kernel, so no sample
sees another. The model must not make a KV cache (it would skip the packed mask):
:func:`model_inputs` sets ``use_cache=False``. ``cu_seqlens`` ``[n + 1]`` gives the
boundaries for other kernels. Each sample's first label is -100, so no loss crosses a
boundary.

Both carry ``pixel_values`` / ``image_grid_thw``, ``pixel_values_videos`` /
``video_grid_thw`` (the processor's float32 pixel values; the model casts them to its
vision tower's dtype, so ``pixel_dtype=torch.bfloat16`` for a bf16 tower gives it the same
values and halves what crosses from the workers), ``mm_token_type_ids``, ``second_per_grid_ts`` (Qwen2.5-VL, the
processor's 2 / fps), and bookkeeping: ``keys`` (samples kept, in order) and ``dropped``
(a :class:`mmstream.types.Drop` for each sample the processor rejected or whose tokens
disagreed with mmstream's count, as the Idefics3 collator reports them; logged too;
``strict=True`` raises instead; with ``StreamingDataset(config, emit_drops=True)`` the
stream's own drops are listed there too). ``collate.stats`` counts, per process, the
samples kept and each drop reason.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Optional, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from mmstream.errors import SampleError
from mmstream.pack import Pack
from mmstream.types import Drop, Sample

from .encode import IGNORE_INDEX, SampleEncoder
from .rope import RopeIndex

log = logging.getLogger(__name__)

#: what ``model.forward`` takes from a batch (the rest is bookkeeping)
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "position_ids", "mm_token_type_ids", "pixel_values",
              "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


#: transformers 5 brought what the adapter uses: the processors' ``mm_token_type_ids`` and
#: per-modality call kwargs, ``get_rope_index(input_ids, mm_token_type_ids, ...)``, the video
#: processor's ``cap_pixels_per_frame``, packed ``position_ids`` with a text row (tested: 5.25.0)
MIN_TRANSFORMERS = 5


def require_transformers() -> None:
    from importlib.metadata import version

    have = version("transformers")
    if int(have.split(".")[0]) < MIN_TRANSFORMERS:
        raise ImportError(f"training_adapters.qwen2vl needs transformers >= {MIN_TRANSFORMERS} (tested with 5.25.0); "
                          f"this environment has {have}")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments from a collated batch (``use_cache=False`` for packs)."""
    out = {k: batch[k] for k in MODEL_KEYS if k in batch}
    if batch.get("packed"):
        out["use_cache"] = False
    return out


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class Qwen2VLCollator:
    """Samples (padded batch) or a Pack (one packed sequence) -> model inputs; see the module
    docstring. ``hf_config``: the model's config object or checkpoint folder (for the
    mRoPE ids: merge size, Qwen2.5-VL's ``tokens_per_second``)."""

    def __init__(self, processor: Any, model: Any, hf_config: Any, *, strict: bool = False,
                 pixel_dtype: Optional[torch.dtype] = None):
        require_transformers()
        if model.name not in ("qwen2-vl", "qwen2.5-vl"):
            raise ValueError(f"Qwen2VLCollator needs a qwen2-vl / qwen2.5-vl model, got {model.name!r}")
        self.encoder = SampleEncoder(processor, model)
        self.rope = RopeIndex(hf_config)
        if self.rope.family != model.name:
            raise ValueError(f"the stream counts for {model.name} but hf_config is {self.rope.family}'s")
        cfg = self.rope.config
        for name, have in (("image_token_id", processor.image_token_id), ("video_token_id", processor.video_token_id)):
            if getattr(cfg, name, have) != have:
                raise ValueError(f"hf_config.{name} = {getattr(cfg, name)} but the tokenizer's is {have}")
        mine, theirs = model.tokenizer, processor.tokenizer
        specials = model.placeholder_tokens()
        if len(mine) != len(theirs) or mine.convert_tokens_to_ids(specials) != theirs.convert_tokens_to_ids(specials):
            raise ValueError(f"the processor's tokenizer ({len(theirs)} tokens) is not the stream's "
                             f"model.tokenizer {model.tokenizer_name!r} ({len(mine)} tokens): counts would disagree")
        self.pad_id = processor.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has no pad token (Qwen's is <|endoftext|>)")
        self.strict = strict
        self.pixel_dtype = pixel_dtype
        self.stats: Counter = Counter()  # per process: samples kept, and each drop reason

    def __call__(self, item: Any) -> dict[str, Any]:
        packed = isinstance(item, Pack)
        if packed:
            samples = list(item.samples)
        else:
            samples = [item] if isinstance(item, (Sample, Drop)) else list(item)
        encoded: list[dict[str, Any]] = []
        dropped: list[Drop] = []
        for sample in samples:
            if isinstance(sample, Drop):  # the stream's own drops (StreamingDataset(emit_drops=True))
                dropped.append(sample)
                continue
            try:
                encoded.append(self.encoder(sample))
            except SampleError as exc:
                if self.strict:
                    raise
                log.warning("dropped %s: %s", sample.key, exc)
                dropped.append(Drop(key=sample.key, source=sample.source, reason=exc.reason, path=exc.path,
                                    message=exc.message))
        batch = self.packed(encoded) if packed else self.padded(encoded)
        batch["dropped"] = dropped
        self.stats.update(d.reason for d in dropped)
        self.stats["kept"] += len(encoded)
        return batch

    # -- assembling ------------------------------------------------------------------------
    def _media(self, encoded: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                     "second_per_grid_ts"):
            parts = [e[name] for e in encoded if name in e]
            if parts:
                pixels = name in ("pixel_values", "pixel_values_videos")
                out[name] = _joined(parts, self.pixel_dtype if pixels else None)
        return out

    def _rope(self, input_ids, types, media, attention_mask=None) -> torch.Tensor:
        return self.rope(input_ids, types, media.get("image_grid_thw"), media.get("video_grid_thw"),
                         media.get("second_per_grid_ts"), attention_mask)

    def padded(self, encoded: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded ``[B, L]`` batch; ``position_ids`` ``[3, B, L]``."""
        if not encoded:
            return self._empty(packed=False)
        ids = pad_sequence([e["input_ids"] for e in encoded], batch_first=True, padding_value=self.pad_id)
        mask = pad_sequence([torch.ones_like(e["input_ids"]) for e in encoded], batch_first=True, padding_value=0)
        labels = pad_sequence([e["labels"] for e in encoded], batch_first=True, padding_value=IGNORE_INDEX)
        types = pad_sequence([e["mm_token_type_ids"] for e in encoded], batch_first=True, padding_value=0)
        media = self._media(encoded)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "mm_token_type_ids": types,
                 "position_ids": self._rope(ids, types, media, mask), **media}
        batch.update(keys=[e["key"] for e in encoded], packed=False)
        return batch

    def packed(self, encoded: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One ``[1, L]`` sequence; ``position_ids`` ``[4, 1, L]`` (text row + mRoPE, per sample)."""
        if not encoded:
            return self._empty(packed=True)
        rows = []
        for e in encoded:  # a sample's grids are its own entries: no pixels joined or cast here
            mrope = self._rope(e["input_ids"][None], e["mm_token_type_ids"][None], e)
            text = torch.arange(len(e["input_ids"]), dtype=mrope.dtype)[None, None]
            rows.append(torch.cat([text, mrope]))
        labels = []
        for e in encoded:
            lab = e["labels"].clone()
            lab[0] = IGNORE_INDEX  # never predicted from the previous sample's last token
            labels.append(lab)
        lengths = [len(e["input_ids"]) for e in encoded]
        batch = {"input_ids": torch.cat([e["input_ids"] for e in encoded])[None],
                 "labels": torch.cat(labels)[None],
                 "mm_token_type_ids": torch.cat([e["mm_token_type_ids"] for e in encoded])[None],
                 "position_ids": torch.cat(rows, dim=2), **self._media(encoded),
                 "cu_seqlens": torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)}
        batch.update(keys=[e["key"] for e in encoded], packed=True)
        return batch

    def _empty(self, packed: bool) -> dict[str, Any]:
        z = torch.zeros((0, 0), dtype=torch.long)
        return {"input_ids": z, "labels": z.clone(), "keys": [], "packed": packed}


__all__ = ["Qwen2VLCollator", "model_inputs", "to_device", "MODEL_KEYS"]


def _joined(parts: Sequence[torch.Tensor], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.cat(parts).to(dtype)`` in one pass over the bytes: a sample's pixel values are
    up to ~140 MB of float32 at Qwen's default sizes, and each extra copy costs the worker ~20-40 ms.
    A single part in its dtype is returned as it is (the batch of one sample)."""
    dtype = dtype or parts[0].dtype
    if len(parts) == 1:
        return parts[0].to(dtype)  # no copy when already of that dtype
    out = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=dtype)
    return torch.cat(parts, out=out)  # converts while copying
