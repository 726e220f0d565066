"""What every model family knows: its training-record format and its token counts.

    model = get_model(ModelConfig(name="minicpmv-2.5", tokenizer="path/to/tok"))
    rec = model.format_plans(record, plans)                 # the training record
    tokens = model.count_tokens(record, rec, media_shapes(plans))  # {"text", "visual", "total"}

A family subclasses :class:`Model` in its own file under ``mmstream/models/`` and
lists the config names it serves in ``names``; the registry finds it by itself.

Token counting modes (``model.token_count``):

- ``t2vid`` (REFERENCE 4): ``text`` is the tokenized ``"\\n".join(turn texts)`` of the
  *normalised record* with the raw ``<video>``/``<image>`` tags left in, no template,
  plus one BOS when the tokenizer has one (never an EOS); ``visual`` is the sum of the
  model's visual tokens over every image/frame; ``total = text + visual``.
- ``chat_template``: the model's conversation is rendered with the tokenizer's chat
  template and every visual placeholder expanded to the tokens the model really sees
  (image/slice wrappers and one query token per visual feature). ``total`` is the
  length of that token sequence; ``visual`` is the number of visual feature tokens
  in it (the same number ``t2vid`` uses); ``text = total - visual``, i.e. ``text``
  includes the template and the wrapper tokens around each image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

from ..config import ModelConfig
from ..errors import MEDIA_TAG_MISMATCH, ConfigError, SampleError
from ..types import IMAGE_TAG, VIDEO_TAG, Clip, MediaPlan, Record, Turn

# Drop reasons of the format stage (counter names).
NO_ANSWER = "no_answer"  # no assistant turn
BAD_TURN_ORDER = "bad_turn_order"  # turns are not user, assistant, user, ... ending with an answer
EMPTY_ANSWER = "empty_answer"  # an assistant turn with no text
ODD_FRAMES = "odd_frames"  # a Qwen video with an odd frame count reached the format (plan not trimmed)
BAD_FPS = "bad_fps"  # a sampling rate <= 0 (upstream divides by zero)
BAD_SIZE = "bad_size"  # a frame size the model's resize rule rejects (zero side, aspect > 200)

TOKEN_COUNT_MODES = ("t2vid", "chat_template")
MEDIA_TAGS = (IMAGE_TAG, VIDEO_TAG)
VIDEO_KINDS = ("video", "frames", "pages")  # media that are a sequence of frames

#: Options every family accepts (name -> default); families add their own in ``OPTIONS``.
COMMON_OPTIONS: dict[str, Any] = {
    # chat_template mode: a Jinja template (inline text or a file path) replacing the
    # tokenizer's own; null uses the tokenizer's chat template.
    "chat_template": None,
    # chat_template mode: let the tokenizer add its special tokens (e.g. BOS) on top of
    # the rendered template. Templates write their own BOS, so off by default.
    "add_special_tokens": False,
}


@dataclass(frozen=True)
class MediaShape:
    """The size facts of one media item that token counts depend on."""

    kind: str
    num_frames: int
    width: int
    height: int


def media_shapes(items: Sequence[MediaPlan | Clip]) -> list[MediaShape]:
    """Shapes of plans (before decoding) or clips (after)."""
    out = []
    for item in items:
        if isinstance(item, Clip):
            w, h = item.size
        else:
            w, h = item.width, item.height
        out.append(MediaShape(item.kind, item.num_frames, int(w), int(h)))
    return out


# -- conversation checks shared by every format ---------------------------------------

def count_tags(text: str) -> int:
    return sum(text.count(tag) for tag in MEDIA_TAGS)


def strip_tags(text: str) -> str:
    for tag in MEDIA_TAGS:
        text = text.replace(tag, "")
    return text


def checked_turns(record: Record) -> list[Turn]:
    """The record's turns if a training format can take them, else :class:`SampleError`.

    Rules: leading ``system`` turns are allowed; after them the turns go user,
    assistant, user, ... and end with an assistant turn (``bad_turn_order``); at
    least one assistant turn (``no_answer``); no blank answer (``empty_answer``);
    media tags (``<image>``/``<video>``, counted in user turns) are either absent,
    and every medium goes to the front of the first user turn, or exactly one per
    medium (``media_tag_mismatch``).
    """
    turns = list(record.turns)
    body = turns
    while body and body[0].role == "system":
        body = body[1:]
    if not any(t.role == "assistant" for t in body):
        raise SampleError(NO_ANSWER, "the conversation has no assistant turn")
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise SampleError(BAD_TURN_ORDER, f"turn {i} is {turn.role!r}, expected {expected!r}")
    if body[-1].role != "assistant":
        raise SampleError(BAD_TURN_ORDER, "the last turn is an unanswered user turn")
    for turn in body:
        if turn.role == "assistant" and not turn.content.strip():
            raise SampleError(EMPTY_ANSWER, "an assistant turn is empty")
    tags = sum(count_tags(t.content) for t in body if t.role == "user")
    if tags and tags != len(record.media):
        raise SampleError(MEDIA_TAG_MISMATCH, f"{tags} media tag(s) for {len(record.media)} media item(s)")
    return turns


def media_by_turn(record: Record, turns: list[Turn]) -> list[list[int]]:
    """For each turn, the indices of the media whose tags it holds (in tag order).

    Untagged media (a record with no tags) all belong to the first user turn.
    """
    slots: list[list[int]] = [[] for _ in turns]
    n = 0
    for i, turn in enumerate(turns):
        if turn.role != "user":
            continue
        k = count_tags(turn.content)
        slots[i] = list(range(n, n + k))
        n += k
    if n == 0 and record.media:
        first_user = next(i for i, t in enumerate(turns) if t.role == "user")
        slots[first_user] = list(range(len(record.media)))
    return slots


def default_frame_names(record: Record, frame_counts: Sequence[int]) -> list[list[str]]:
    """``<key>/<n:05d>.jpg`` with ``n`` counting frames over the whole sample."""
    out, n = [], 0
    for count in frame_counts:
        out.append([f"{record.key}/{n + j:05d}.jpg" for j in range(count)])
        n += count
    return out


# -- tokenizer ------------------------------------------------------------------------

def looks_like_path(name: str) -> bool:
    """A tokenizer name that can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or name.endswith("/") or name.count("/") > 1)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained``; a folder whose tokenizer is custom code (an
    ``auto_map``, as MiniCPM-V's) needs ``model.trust_remote_code: true``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot use it"
        text = str(exc)
        if "trust_remote_code" in text and not trust_remote_code:
            raise ConfigError(f"model.tokenizer {name!r} ships its own tokenizer code (an auto_map to a custom "
                              f"class); set model.trust_remote_code: true to run it (only for a model you "
                              f"trust), as its own scripts do") from None
        raise ConfigError(f"model.tokenizer: cannot load tokenizer {name!r}: {text.strip().splitlines()[0]}") from None


class Model:
    """Base class: one subclass per model family (see the module docstring).

    Picklable for DataLoader workers: the tokenizer is not pickled; each process
    loads it again on first use (``self.tokenizer``). It is loaded once at
    construction too, so a bad name or path fails at start-up.
    """

    names: ClassVar[tuple[str, ...]] = ()  # config names this class serves
    OPTIONS: ClassVar[dict[str, Any]] = {}  # family knobs -> upstream default
    output_format: ClassVar[str] = ""  # what format() writes (minicpmv | megatron)
    resize_step: ClassVar[int] = 28  # pixels between the frame sizes filter.over_budget: smaller_frames tries

    def __init__(self, cfg: ModelConfig, *, load: bool = True):
        self.name = cfg.name
        if cfg.token_count not in TOKEN_COUNT_MODES:
            raise ConfigError(f"model.token_count: {cfg.token_count!r} is not one of {TOKEN_COUNT_MODES}")
        self.token_count = cfg.token_count
        known = {**COMMON_OPTIONS, **self.OPTIONS}
        unknown = sorted(set(cfg.options or {}) - set(known))
        if unknown:
            raise ConfigError(f"model.options: unknown key(s) {unknown} for {cfg.name}; known: {sorted(known)}")
        self.options: dict[str, Any] = {**known, **(cfg.options or {})}
        self.check_options()
        self.tokenizer_name = cfg.tokenizer
        self.trust_remote_code = bool(cfg.trust_remote_code)
        if cfg.tokenizer is not None:
            name = os.path.expanduser(str(cfg.tokenizer))
            if looks_like_path(name) and not os.path.exists(name):
                raise ConfigError(f"model.tokenizer: path {cfg.tokenizer!r} does not exist")
            self.tokenizer_name = name
        elif cfg.token_count == "chat_template":
            raise ConfigError("model.tokenizer: token_count 'chat_template' needs a tokenizer")
        self._tok = None
        self._tok_pid: Optional[int] = None
        if load and self.tokenizer_name is not None:
            self.check_tokenizer(self.tokenizer)

    # pickling: never ship a tokenizer to a worker
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tok"] = None
        state["_tok_pid"] = None
        return state

    @property
    def tokenizer(self):
        """The HF tokenizer, loaded once per process."""
        if self.tokenizer_name is None:
            raise ConfigError(f"model {self.name}: no tokenizer configured (model.tokenizer)")
        if self._tok is None or self._tok_pid != os.getpid():
            tok = load_tokenizer(self.tokenizer_name, self.trust_remote_code)
            template = self.options.get("chat_template")
            if template:
                if os.path.isfile(os.path.expanduser(template)):
                    with open(os.path.expanduser(template), encoding="utf-8") as f:
                        template = f.read()
                tok.chat_template = template
            self._tok, self._tok_pid = tok, os.getpid()
        return self._tok

    def check_tokenizer(self, tok) -> None:
        """Start-up checks: in chat_template mode the template exists and every
        placeholder token is one token (else the count would be wrong)."""
        if self.token_count != "chat_template":
            return
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"model.tokenizer {self.tokenizer_name!r} has no chat template; "
                              "set model.options.chat_template or use token_count: t2vid")
        for token in self.placeholder_tokens():
            ids = tok.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"model.tokenizer {self.tokenizer_name!r}: placeholder {token!r} is "
                                  f"{len(ids)} tokens, not one; chat_template counts would be wrong")

    def check_options(self) -> None:
        """Validate ``self.options`` (raise :class:`ConfigError`)."""

    # -- what a family defines -----------------------------------------------------
    def visual_tokens(self, width: int, height: int) -> int:
        """Visual tokens of one image or frame at this (source) size."""
        raise NotImplementedError

    def input_size(self, kind: str, num_frames: int, width: int, height: int) -> Optional[tuple[int, int]]:
        """(width, height) the model's own processor resizes this medium's frames to, when
        that size does not depend on anything but these (``sampling.resize.to_model``
        decodes straight to it); None where the family has no such single size."""
        return None

    def media_tokens(self, kind: str, num_frames: int, width: int, height: int) -> int:
        """Visual tokens of one media item (default: every frame is an image)."""
        return (1 if kind == "image" else num_frames) * self.visual_tokens(width, height)

    def frame_count_rule(self, num_frames: int) -> int:
        """How many frames a video must have for this model (the media stage trims
        or repeats the last frame to reach it, before decoding). Default: as is."""
        return num_frames

    def format(self, record: Record, frame_counts: Sequence[int],
               frame_names: Optional[Sequence[Sequence[str]]] = None,
               fps: Optional[Sequence[Optional[float]]] = None) -> dict:
        """The training record. ``frame_counts``/``fps``: one per ``record.media``."""
        raise NotImplementedError

    def placeholder_tokens(self) -> list[str]:
        """Tokens the chat_template expansion uses; each must be a single token."""
        return []

    def templated_text(self, model_record: dict, shapes: Sequence[MediaShape]) -> str:
        """chat_template mode: the rendered conversation with placeholders expanded."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    def format_plans(self, record: Record, plans: Sequence[MediaPlan],
                     frame_names: Optional[Sequence[Sequence[str]]] = None) -> dict:
        return self.format(record, [p.num_frames for p in plans], frame_names, [p.fps for p in plans])

    def format_clips(self, record: Record, clips: Sequence[Clip],
                     frame_names: Optional[Sequence[Sequence[str]]] = None) -> dict:
        return self.format(record, [c.num_frames for c in clips], frame_names, [c.fps for c in clips])

    def _check_counts(self, record: Record, frame_counts: Sequence[int], what: str = "frame_counts") -> None:
        if len(frame_counts) != len(record.media):
            raise ValueError(f"{what}: {len(frame_counts)} given for {len(record.media)} media item(s)")

    def visual_total(self, shapes: Sequence[MediaShape]) -> int:
        return sum(self.media_tokens(s.kind, s.num_frames, s.width, s.height) for s in shapes)

    def t2vid_text_tokens(self, record: Record) -> int:
        """REFERENCE 4: ``"\\n".join(turn texts)``, raw tags in, no template, BOS added."""
        tok = self.tokenizer
        text = "\n".join(t.content for t in record.turns)
        n = len(tok.encode(text, add_special_tokens=False))
        return n + (1 if tok.bos_token_id is not None else 0)

    def template_ids(self, model_record: dict, shapes: Sequence[MediaShape]) -> list[int]:
        text = self.templated_text(model_record, shapes)
        return self.tokenizer.encode(text, add_special_tokens=bool(self.options["add_special_tokens"]))

    def render_template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def count_tokens(self, record: Record, model_record: dict, shapes: Sequence[MediaShape]) -> dict[str, int]:
        """``{"text", "visual", "total"}`` in the configured mode (module docstring)."""
        visual = self.visual_total(shapes)
        if self.token_count == "t2vid":
            text = self.t2vid_text_tokens(record)
            return {"text": text, "visual": visual, "total": text + visual}
        total = len(self.template_ids(model_record, shapes))
        return {"text": total - visual, "visual": visual, "total": total}

    def text_tokens(self, record: Record, model_record: dict,
                    shapes: Optional[Sequence[MediaShape]] = None) -> int:
        """The ``text`` part of :meth:`count_tokens` (``shapes`` needed for chat_template)."""
        if self.token_count == "t2vid":
            return self.t2vid_text_tokens(record)
        if shapes is None:
            raise ValueError("chat_template counting needs the media shapes")
        return self.count_tokens(record, model_record, shapes)["text"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tokenizer={self.tokenizer_name!r})"
