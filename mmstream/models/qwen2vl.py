"""Qwen2-VL / Qwen2.5-VL: Pai-Megatron-Patch's ChatML record and the Qwen token counts.

    model = get_model(ModelConfig(name="qwen2-vl", options={"second_per_grid": "pai"}))
    model.frame_count_rule(25)                        # 24: Pai drops the last odd frame
    model.format(record, frame_counts=[24], fps=[2.0])
    # {"conversations": [{"from": "human", "value": "<video>\\nQ"}, {"from": "gpt", "value": "A"}],
    #  "second_per_grid_ts": [0.5]}

Each frame is resized by :func:`smart_resize` (sides multiples of 28, pixel count
within [min_pixels, max_pixels]); 14x14 patches are merged 2x2 and frames 2 by 2, so
an image costs (h/28)*(w/28) tokens and a video of T frames ceil(T/2)*(h/28)*(w/28)
(an odd T repeats the last frame).

Whose token sequence ``chat_template`` counting measures is ``options.sequence``:

- ``transformers`` (default): the turns as written, each tag replaced by its vision
  placeholder, through the tokenizer's chat template: the text a Hugging Face
  ``Qwen2VLProcessor`` is given.
- ``pai``: the sequence Pai-Megatron-Patch's ChatML task encoder builds from the cached
  sample (:func:`pai_messages`): each user turn split at its media tags into content
  parts with every text part stripped (``"<video>\\nQ"`` loses the newline), the system
  prompt made explicit, then the chat template and the pad tokens expanded.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from ..errors import MEDIA_TAG_MISMATCH, ConfigError, SampleError
from ..types import IMAGE_TAG, VIDEO_TAG, Record
from .base import (BAD_FPS, BAD_SIZE, BAD_TURN_ORDER, ODD_FRAMES, VIDEO_KINDS, MediaShape, Model, checked_turns,
                   media_by_turn)

PATCH_SIZE = 14
MERGE_SIZE = 2  # 2x2 patches become one token
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: output sides are multiples of this
TEMPORAL_PATCH_SIZE = 2  # frames merged per token
MAX_ASPECT_RATIO = 200  # smart_resize refuses more extreme images

IMAGE_MIN_PIXELS = 56 * 56  # Qwen2VLImageProcessor defaults
IMAGE_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28  # Qwen2VLVideoProcessor / qwen-vl-utils defaults
VIDEO_MAX_PIXELS = 768 * 28 * 28
DEFAULT_FPS = 2.0  # Pai's rate for frame folders without an fps sidecar

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
TAG_RE = re.compile(re.escape(IMAGE_TAG) + "|" + re.escape(VIDEO_TAG))

SECOND_PER_GRID = ("pai", "hf")
SEQUENCES = ("transformers", "pai")
#: The system turn Pai's encoder adds to a conversation that has none (as the Qwen2-VL template does).
PAI_SYSTEM_PROMPT = "You are a helpful assistant."
PAD_RE = re.compile(re.escape(IMAGE_PAD) + "|" + re.escape(VIDEO_PAD))
RULES = ("transformers", "qwen-vl-utils")
EVEN_FRAMES = ("drop_last", "repeat_last", "off")


def pai_content(text: str) -> list[dict[str, str]]:
    """A user turn as Pai's encoder hands it to the chat template: split at each
    ``<image>``/``<video>`` tag; the text before, between and after the tags becomes
    ``{"type": "text"}`` parts, each **stripped** (a stretch of only whitespace stays as
    an empty part); each tag becomes ``{"type": "image"|"video", kind: "<n>"}``, n counting
    that kind in the turn. Text with no tag is one stripped part.

    >>> pai_content("<video>\\nWhat is it?")
    [{'type': 'video', 'video': '0'}, {'type': 'text', 'text': 'What is it?'}]
    """
    parts: list[dict[str, str]] = []
    seen = {"image": 0, "video": 0}
    cur = 0
    for m in TAG_RE.finditer(text):
        if m.start() > cur:
            parts.append({"type": "text", "text": text[cur:m.start()].strip()})
        kind = m.group()[1:-1]
        parts.append({"type": kind, kind: str(seen[kind])})
        seen[kind] += 1
        cur = m.end()
    if cur < len(text):
        parts.append({"type": "text", "text": text[cur:].strip()})
    return parts


def pai_messages(conversations: Sequence[dict]) -> list[dict[str, Any]]:
    """Pai-Megatron-Patch's chat messages for a ChatML conversation (``from``/``value``,
    ``human``/``gpt``, an optional leading ``system`` turn), as its ChatML task encoder
    builds them: a conversation of an even number of turns gets the system turn
    :data:`PAI_SYSTEM_PROMPT`, an odd one takes its first turn's text as the system turn;
    then the turns must alternate human, gpt (else Pai drops the sample:
    ``bad_turn_order``); human turns become :func:`pai_content` parts, gpt and system
    turns keep their text as it is."""
    turns = list(conversations)
    if len(turns) % 2 == 0:
        messages: list[dict[str, Any]] = [{"role": "system", "content": PAI_SYSTEM_PROMPT}]
    else:
        messages = [{"role": "system", "content": turns[0]["value"]}]
        turns = turns[1:]
    for i, turn in enumerate(turns):
        expected = ("human", "gpt")[i % 2]
        if turn["from"] != expected:
            raise SampleError(BAD_TURN_ORDER, f"Pai's encoder needs [system] human gpt ...: turn {i} is "
                                              f"{turn['from']!r}, expected {expected!r} (at most one system turn)")
        if expected == "human":
            messages.append({"role": "user", "content": pai_content(turn["value"])})
        else:
            messages.append({"role": "assistant", "content": turn["value"]})
    return messages


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: float = IMAGE_MIN_PIXELS,
                 max_pixels: float = IMAGE_MAX_PIXELS, rules: str = "transformers") -> tuple[int, int]:
    """(height, width) Qwen2-VL resizes a frame to: each side rounded to a multiple of
    ``factor`` (Python's round, halves to even); if the area is then above
    ``max_pixels`` both sides shrink by sqrt(area/max_pixels) and round down, if below
    ``min_pixels`` grow by sqrt(min_pixels/area) and round up (aspect kept).

    ``rules``: ``transformers`` (the image and video processors: a shrunk side is at least
    ``factor``) or ``qwen-vl-utils`` (its ``smart_resize``: the first rounding is at least
    ``factor``, a shrunk side is not)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} is above {MAX_ASPECT_RATIO}")
    utils = rules == "qwen-vl-utils"
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if utils:
        h, w = max(factor, h), max(factor, w)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
        if not utils:
            h, w = max(factor, h), max(factor, w)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def frame_max_pixels(num_frames: int, min_pixels: int, max_pixels: int, total_pixels: Optional[int],
                     rules: str = "transformers") -> float:
    """The per-frame pixel cap of a video of ``num_frames`` frames under a total-pixel
    budget: max(min(max_pixels, total_pixels / frames x 2), int(min_pixels x 1.05)), the
    share computed in floats (qwen-vl-utils' ``fetch_video``) or with integer division
    (transformers' ``cap_pixels_per_frame``). No budget: ``max_pixels``."""
    if total_pixels is None or num_frames <= 0:
        return max_pixels
    if rules == "qwen-vl-utils":
        share: float = total_pixels / num_frames * TEMPORAL_PATCH_SIZE
    else:
        share = total_pixels * TEMPORAL_PATCH_SIZE // num_frames
    return max(min(max_pixels, share), int(min_pixels * 1.05))


def qwen_grid_thw(num_frames: int, width: int, height: int, min_pixels: int, max_pixels: float,
                  rules: str = "transformers") -> tuple[int, int, int]:
    """``(t, h, w)`` in patches, as ``image_grid_thw``/``video_grid_thw`` report it
    (one frame, an image, has t = 1)."""
    h, w = smart_resize(height, width, FACTOR, min_pixels, max_pixels, rules)
    return math.ceil(num_frames / TEMPORAL_PATCH_SIZE), h // PATCH_SIZE, w // PATCH_SIZE


def qwen_tokens(num_frames: int, width: int, height: int, min_pixels: int, max_pixels: float,
                rules: str = "transformers") -> int:
    t, h, w = qwen_grid_thw(num_frames, width, height, min_pixels, max_pixels, rules)
    return t * h * w // (MERGE_SIZE * MERGE_SIZE)


class Qwen2VL(Model):
    names = ("qwen2-vl",)
    output_format = "megatron"
    resize_step = FACTOR  # its token grid changes at multiples of 28 px
    OPTIONS: dict[str, Any] = {
        "min_pixels": IMAGE_MIN_PIXELS,  # images (HF image processor default 56*56)
        "max_pixels": IMAGE_MAX_PIXELS,  # images (28*28*1280)
        "video_min_pixels": VIDEO_MIN_PIXELS,  # video frames (128*28*28)
        "video_max_pixels": VIDEO_MAX_PIXELS,  # video frames (768*28*28)
        "second_per_grid": "pai",  # pai: 1/fps (Pai-Megatron-Patch); hf: 2/fps (transformers)
        "even_frames": "drop_last",  # drop_last (Pai) | repeat_last (qwen-vl-utils, HF) | off
        "default_fps": DEFAULT_FPS,  # rate of a video whose plan has none (Pai's 2.0)
        # a video's total pixel budget (qwen-vl-utils: 128000 x 28 x 28 x 0.9); its frames shrink to fit
        "video_total_pixels": None,
        "rules": "transformers",  # transformers | qwen-vl-utils: whose smart_resize and budget arithmetic
        # chat_template counting: whose token sequence. transformers: the turns as written (what a
        # Qwen2VLProcessor is given); pai: Pai-Megatron-Patch's encoder (text around each tag stripped)
        "sequence": "transformers",
    }

    def check_options(self) -> None:
        o = self.options
        if o["second_per_grid"] not in SECOND_PER_GRID:
            raise ConfigError(f"model.options.second_per_grid: {o['second_per_grid']!r} is not one of {SECOND_PER_GRID}")
        if o["even_frames"] not in EVEN_FRAMES:
            raise ConfigError(f"model.options.even_frames: {o['even_frames']!r} is not one of {EVEN_FRAMES}")
        for lo, hi in (("min_pixels", "max_pixels"), ("video_min_pixels", "video_max_pixels")):
            if not (isinstance(o[lo], int) and isinstance(o[hi], int) and 0 < o[lo] <= o[hi]):
                raise ConfigError(f"model.options.{lo}/{hi}: need integers with 0 < {lo} <= {hi}")
        if not (isinstance(o["default_fps"], (int, float)) and o["default_fps"] > 0):
            raise ConfigError("model.options.default_fps: must be > 0")
        if o["rules"] not in RULES:
            raise ConfigError(f"model.options.rules: {o['rules']!r} is not one of {RULES}")
        if o["sequence"] not in SEQUENCES:
            raise ConfigError(f"model.options.sequence: {o['sequence']!r} is not one of {SEQUENCES}")
        total = o["video_total_pixels"]
        if total is not None and not (isinstance(total, int) and total > 0):
            raise ConfigError("model.options.video_total_pixels: must be a positive integer or null")

    # -- token counts --------------------------------------------------------------------
    def resized(self, kind: str, num_frames: int, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model resizes this medium's frames to."""
        o = self.options
        if kind in VIDEO_KINDS:
            lo = o["video_min_pixels"]
            hi = frame_max_pixels(num_frames, lo, o["video_max_pixels"], o["video_total_pixels"], o["rules"])
        else:
            lo, hi = o["min_pixels"], o["max_pixels"]
        try:
            return smart_resize(height, width, FACTOR, lo, hi, o["rules"])
        except ValueError as exc:
            raise SampleError(BAD_SIZE, str(exc)) from None

    def input_size(self, kind: str, num_frames: int, width: int, height: int) -> tuple[int, int]:
        """smart_resize is idempotent (a size it returns maps to itself), so frames decoded
        at this size count the same tokens and the processor keeps them as they are."""
        h, w = self.resized(kind, num_frames, width, height)
        return w, h

    def grid_thw(self, kind: str, num_frames: int, width: int, height: int) -> tuple[int, int, int]:
        h, w = self.resized(kind, num_frames, width, height)
        t = math.ceil(num_frames / TEMPORAL_PATCH_SIZE) if kind in VIDEO_KINDS else 1
        return t, h // PATCH_SIZE, w // PATCH_SIZE

    def _tokens(self, kind: str, num_frames: int, width: int, height: int) -> int:
        t, h, w = self.grid_thw(kind, num_frames, width, height)
        return t * h * w // (MERGE_SIZE * MERGE_SIZE)

    def visual_tokens(self, width: int, height: int) -> int:
        """Tokens of one image (image pixel limits)."""
        return self._tokens("image", 1, width, height)

    def media_tokens(self, kind: str, num_frames: int, width: int, height: int) -> int:
        return self._tokens(kind, num_frames, width, height)

    def frame_count_rule(self, num_frames: int) -> int:
        """Frames per video for the megatron output: even. ``drop_last`` (Pai) drops the
        last of an odd count, except that a single frame is repeated (two frames);
        ``repeat_last`` repeats the last frame; ``off`` keeps the count."""
        rule = self.options["even_frames"]
        if rule == "off" or num_frames % 2 == 0:
            return num_frames
        if rule == "drop_last" and num_frames > 1:
            return num_frames - 1
        return num_frames + 1

    # -- format ----------------------------------------------------------------------------
    def second_per_grid_ts(self, fps: Optional[float]) -> float:
        if fps is None:
            fps = self.options["default_fps"]
        if not fps > 0:
            raise SampleError(BAD_FPS, f"sampling rate {fps} is not > 0")
        return (1.0 if self.options["second_per_grid"] == "pai" else float(TEMPORAL_PATCH_SIZE)) / fps

    def format(self, record: Record, frame_counts, frame_names=None, fps=None) -> dict:
        """Pai's ChatML record: ``from``/``value`` with ``human``/``gpt``; each media tag
        rewritten to the tag of its medium (``<video>`` for videos, frame folders and
        pages, ``<image>`` for images); a record without tags gets them, one per
        medium with a newline, in front of the first user turn. ``second_per_grid_ts``
        has one entry per video, from the plan's fps. ``frame_names`` are not used
        (frames travel in the shard's ``.videos`` member)."""
        self._check_counts(record, frame_counts)
        fps = list(fps) if fps is not None else [None] * len(record.media)
        self._check_counts(record, fps, "fps")
        kinds = [m.kind for m in record.media]
        if self.options["even_frames"] != "off":
            for i, (kind, n) in enumerate(zip(kinds, frame_counts)):
                if kind in VIDEO_KINDS and n % 2:
                    raise SampleError(ODD_FRAMES, f"video {i} has {n} frames; apply frame_count_rule to the plan")
        turns = checked_turns(record)
        tag_of = [VIDEO_TAG if k in VIDEO_KINDS else IMAGE_TAG for k in kinds]
        conversations = []
        for turn, media in zip(turns, media_by_turn(record, turns)):
            value = turn.content
            if media:
                if TAG_RE.search(value):
                    order = iter(media)
                    value = TAG_RE.sub(lambda m: tag_of[next(order)], value)
                else:  # untagged record: tags in front of the first user turn
                    value = "".join(tag_of[i] + "\n" for i in media) + value
            conversations.append({"from": ROLES[turn.role], "value": value})
        spg = [self.second_per_grid_ts(f) for k, f in zip(kinds, fps) if k in VIDEO_KINDS]
        return {"conversations": conversations, "second_per_grid_ts": spg}

    # -- chat_template mode ------------------------------------------------------------
    def placeholder_tokens(self) -> list[str]:
        return [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

    def check_tokenizer(self, tok) -> None:
        """Also, for ``sequence: pai``: the chat template renders content parts the
        Qwen2-VL way (one ``<|vision_start|><|video_pad|><|vision_end|>`` per video part),
        as Pai's encoder needs it to."""
        super().check_tokenizer(tok)
        if self.token_count != "chat_template" or self.options["sequence"] != "pai":
            return
        probe = [{"role": "user", "content": [{"type": "video", "video": "0"}, {"type": "text", "text": "x"}]}]
        try:
            text = tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        except Exception as exc:  # jinja errors: the template cannot take content parts
            text = f"error: {exc}"
        if str(text).count(VISION_START + VIDEO_PAD + VISION_END) != 1:
            raise ConfigError(f"model.tokenizer {self.tokenizer_name!r}: its chat template does not render content "
                              f"parts with Qwen2-VL's vision placeholders, which sequence: pai needs (Pai renders "
                              f"with the processor's chat_template.json: set model.options.chat_template to it)")

    def media_placeholder(self, shape: MediaShape) -> str:
        pad = VIDEO_PAD if shape.kind in VIDEO_KINDS else IMAGE_PAD
        return VISION_START + pad * self.media_tokens(shape.kind, shape.num_frames, shape.width, shape.height) + VISION_END

    def templated_text(self, model_record: dict, shapes: Sequence[MediaShape]) -> str:
        """``sequence: transformers``: tags replaced by ``<|vision_start|>`` + one pad token
        per visual token + ``<|vision_end|>``, in media order, then the chat template.
        ``sequence: pai``: :func:`pai_messages` through the chat template, then each pad
        token expanded to the visual tokens of its medium, in media order."""
        if self.options["sequence"] == "pai":
            return self._pai_text(model_record, shapes)
        order = iter(shapes)
        roles = {v: k for k, v in ROLES.items()}

        def expand(_m: re.Match) -> str:
            shape = next(order, None)
            if shape is None:
                raise SampleError(MEDIA_TAG_MISMATCH, "more media tags than media in the record")
            return self.media_placeholder(shape)

        messages = [{"role": roles[c["from"]], "content": TAG_RE.sub(expand, c["value"])}
                    for c in model_record["conversations"]]
        return self.render_template(messages)

    def _pai_text(self, model_record: dict, shapes: Sequence[MediaShape]) -> str:
        text = self.render_template(pai_messages(model_record["conversations"]))
        order = iter(shapes)

        def expand(m: re.Match) -> str:
            shape = next(order, None)
            if shape is None:
                raise SampleError(MEDIA_TAG_MISMATCH, "more media placeholders than media in the record")
            if (m.group() == VIDEO_PAD) != (shape.kind in VIDEO_KINDS):
                raise SampleError(MEDIA_TAG_MISMATCH, f"a {m.group()} placeholder for a {shape.kind} medium")
            return m.group() * self.media_tokens(shape.kind, shape.num_frames, shape.width, shape.height)

        text = PAD_RE.sub(expand, text)
        if next(order, None) is not None:
            raise SampleError(MEDIA_TAG_MISMATCH, "fewer media placeholders than media in the record")
        return text


class Qwen25VL(Qwen2VL):
    """Qwen2.5-VL: the same resize, merge and format rules as Qwen2-VL."""

    names = ("qwen2.5-vl",)


__all__ = ["Qwen2VL", "Qwen25VL", "pai_content", "pai_messages", "PAI_SYSTEM_PROMPT", "smart_resize", "frame_max_pixels", "qwen_grid_thw", "qwen_tokens", "FACTOR",
           "IMAGE_MIN_PIXELS", "IMAGE_MAX_PIXELS", "VIDEO_MIN_PIXELS", "VIDEO_MAX_PIXELS"]
