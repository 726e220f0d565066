"""Pai-Megatron-Patch's Qwen2-VL sequence from mmstream's megatron shards.

Pai's ChatML task encoder turns a cached sample into the token ids and labels its
Qwen2-VL model trains on. :class:`PaiChatMLTaskEncoder` builds that sequence by the same
rule with transformers' own tokenizer and Qwen2-VL processors::

    from training_adapters.megatron import PaiChatMLTaskEncoder

    encoder = PaiChatMLTaskEncoder("path/to/Qwen2-VL-7B-Instruct", max_length=8192)
    ds = get_train_dataset("/data/cache", worker_config=wc, batch_size=None, shuffle_buffer_size=100,
                           max_samples_per_sequence=100, task_encoder=encoder)
    for s in get_savable_loader(ds):
        s.input_ids        # [L] int64; L == s.tokens["total"] when cached with sequence: pai
        s.labels           # [L]: -100 but on the answers (not shifted: the model shifts)
        s.pixel_values_videos, s.video_grid_thw, s.second_per_grid_ts

The rule (:func:`mmstream.models.qwen2vl.pai_messages`): a system turn (the sample's own,
or "You are a helpful assistant."), each user turn split at its media tags with the text
around every tag stripped, the chat template, then each ``<|image_pad|>``/``<|video_pad|>``
expanded to grid_t x grid_h x grid_w / 4 copies. Labels, as Pai masks them: the system
turn, every user turn, each answer's ``<|im_start|>assistant\\n`` and every visual token are
-100; the answer's text, its ``<|im_end|>`` and the newline after it are trained. Pai
stores the same labels shifted left by one with its pad id for -100 (its ``target``).

Frames are resized by the processors with Pai's limits (video frames with the *image*
limits, 3136 .. 1003520 pixels), so the grids are Pai's; pixel values are normalised
with the processors' (the Qwen2-VL checkpoint's) mean and std, where Pai's own encoder
uses ImageNet's.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch

from megatron.energon import Sample, stateless
from megatron.energon.edataclass import edataclass

from mmstream.models.qwen2vl import (IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, IMAGE_PAD, MERGE_SIZE, VIDEO_PAD,
                                     pai_messages)

from .chatml import ChatMLSample, ChatMLTaskEncoder

IGNORE_INDEX = -100


@edataclass
class PaiEncodedSample(Sample):
    """One sample as Pai's encoder makes it, in Hugging Face's names.

    ``input_ids``/``labels``: ``[L]`` int64; ``pixel_values`` ``[patches, 1176]`` and
    ``image_grid_thw`` ``[images, 3]`` (None without images); ``pixel_values_videos`` and
    ``video_grid_thw`` likewise for videos; ``second_per_grid_ts`` ``[videos]`` as stored;
    ``tokens``: the counts mmstream stored in the shard (None when it stored none).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: Optional[torch.Tensor]
    image_grid_thw: Optional[torch.Tensor]
    pixel_values_videos: Optional[torch.Tensor]
    video_grid_thw: Optional[torch.Tensor]
    second_per_grid_ts: torch.Tensor
    tokens: Optional[dict[str, int]] = None


def answer_mask(tok, messages: list[dict[str, Any]]) -> list[bool]:
    """Per token of the templated ``messages``: True where Pai trains (an assistant turn
    after its generation prefix), False elsewhere. Each turn's span is found by rendering
    the conversation up to it; a conversation whose prefixes do not tokenize as prefixes of
    the whole raises ``ValueError`` (Pai's "Encode Error")."""
    return tokens_and_mask(tok, messages)[1]


def tokens_and_mask(tok, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    """The token ids of the templated ``messages`` and :func:`answer_mask` of them (the
    conversation rendered and tokenized once for both)."""
    def ids(msgs: list[dict[str, Any]], prompt: bool = False) -> list[int]:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)
        return tok.encode(text, add_special_tokens=False)

    full = ids(messages)
    mask = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = ids(messages[:i], prompt=True)  # ... + "<|im_start|>assistant\n"
        upto = ids(messages[:i + 1])
        if full[:len(upto)] != upto or upto[:len(head)] != head:
            raise ValueError("the chat template's turns do not tokenize as prefixes of the conversation")
        mask[len(head):len(upto)] = [True] * (len(upto) - len(head))
    return full, mask


class PaiChatMLTaskEncoder(ChatMLTaskEncoder):
    """Cooks with :func:`~.chatml.cook_chatml`, then ``encode_sample`` builds
    :class:`PaiEncodedSample`; batches are lists.

    ``tokenizer``: a folder or hub name (loaded once per worker process) or a tokenizer;
    ``chat_template``: replaces its template (Pai renders with the processor's
    ``chat_template.json``, which for Qwen2.5-VL differs from the tokenizer's);
    ``min_pixels``/``max_pixels``: the resize limits of images and video frames (Pai's);
    ``max_length``: a longer sample raises ``ValueError`` (Pai drops it), and so does a
    sample whose placeholders do not match its media or that has no trained token: the
    worker config's error handler decides (energon's default logs and skips).
    """

    def __init__(self, tokenizer: Union[str, os.PathLike, Any], *, chat_template: Optional[str] = None,
                 min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS,
                 max_length: Optional[int] = None, subflavors: Optional[dict[str, Any]] = None, **kwargs: Any):
        super().__init__(subflavors=subflavors, **kwargs)
        self._tok_source = tokenizer
        self.chat_template = chat_template
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.max_length = max_length
        self._loaded: Optional[tuple[int, Any, Any, Any]] = None  # (pid, tokenizer, image, video processor)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_loaded"] = None  # each worker loads its own
        return state

    def _tools(self) -> tuple[Any, Any, Any]:
        if self._loaded is None or self._loaded[0] != os.getpid():
            from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

            tok = self._tok_source
            if isinstance(tok, (str, os.PathLike)):
                from mmstream.models.base import load_tokenizer

                tok = load_tokenizer(os.fspath(tok))
            if self.chat_template:
                tok.chat_template = self.chat_template
            size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
            images = Qwen2VLImageProcessor(min_pixels=self.min_pixels, max_pixels=self.max_pixels)
            videos = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False)
            self._loaded = (os.getpid(), tok, images, videos)
        return self._loaded[1:]

    @stateless
    def encode_sample(self, sample: ChatMLSample) -> PaiEncodedSample:
        tok, image_proc, video_proc = self._tools()
        messages = pai_messages(sample.conversation)
        ids, trained = tokens_and_mask(tok, messages)

        visual: dict[str, Any] = {"pixel_values": None, "image_grid_thw": None,
                                  "pixel_values_videos": None, "video_grid_thw": None}
        if sample.images:
            out = image_proc(images=list(sample.images), return_tensors="pt")
            visual["pixel_values"], visual["image_grid_thw"] = out["pixel_values"], out["image_grid_thw"]
        if sample.videos:
            out = video_proc(videos=list(sample.videos), return_tensors="pt")
            visual["pixel_values_videos"], visual["video_grid_thw"] = out["pixel_values_videos"], out["video_grid_thw"]

        sizes = {}
        for pad, grids in ((IMAGE_PAD, visual["image_grid_thw"]), (VIDEO_PAD, visual["video_grid_thw"])):
            pad_id = tok.convert_tokens_to_ids(pad)
            counts = [] if grids is None else [int(g.prod()) // (MERGE_SIZE * MERGE_SIZE) for g in grids]
            if ids.count(pad_id) != len(counts):
                raise ValueError(f"sample {sample.__key__!r}: {ids.count(pad_id)} {pad} placeholder(s) "
                                 f"for {len(counts)} medium/media")
            sizes[pad_id] = iter(counts)

        input_ids: list[int] = []
        labels: list[int] = []
        for token, train in zip(ids, trained):
            n = next(sizes[token]) if token in sizes else 1
            input_ids += [token] * n
            labels += [token if train and token not in sizes else IGNORE_INDEX] * n
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise ValueError(f"sample {sample.__key__!r}: {len(input_ids)} tokens > max_length {self.max_length}")
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError(f"sample {sample.__key__!r}: no trained token")
        return PaiEncodedSample.derive_from(
            sample, input_ids=torch.tensor(input_ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long),
            second_per_grid_ts=torch.tensor(sample.second_per_grid_ts, dtype=torch.float32),
            tokens=sample.tokens, **visual)

    def batch(self, samples):
        return samples
