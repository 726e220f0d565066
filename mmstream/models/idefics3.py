"""Idefics3 (Idefics3-8B-Llama3): T2Vid's record (the MiniCPM-V JSON) and its collator's view.

    model = get_model(ModelConfig(name="idefics3", options={"image_splitting": False}))
    rec = model.format(record, [24])           # same JSON as MiniCPM-V
    view = model.collator_view(rec)            # {"messages": [...], "images": [...]}

The sequence T2Vid's Idefics3 collator trains on (REFERENCE 6): the ``<image_NN>`` tags
removed and every turn's text stripped, the images at the start of the first user turn,
the chat template rendered and the **rendered text stripped**, so no newline follows
the last ``<end_of_utterance>`` (option ``strip_text``, default true; false keeps it,
as TRL's Idefics3/SmolVLM SFT example trains), then tokenized by the processor with the
tokenizer's special tokens added (option ``add_special_tokens``, default true here: the
Llama-3 tokenizer adds a BOS in front of the template's own).

Visual tokens per image: 169 per 364x364 tile. Unsplit (T2Vid,
``do_image_splitting=False``): every frame is squashed to 364x364, 169 tokens. Split:
the long side is resized to ``longest_edge`` (upscaling too), the short side keeps
the aspect ratio (made even), both sides are rounded up to multiples of 364, giving
R x C tiles plus one global image: 169 x (R*C + 1); a 1 x 1 result is not split.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import MEDIA_TAG_MISMATCH, ConfigError, SampleError
from .base import MediaShape, Model
from .minicpmv import IMAGE_KEY_RE, image_sizes, minicpmv_record

TILE_SIZE = 364  # the vision encoder's input side (max_image_size.longest_edge)
TOKENS_PER_TILE = 169  # image_seq_len: (364/14)^2 / 2^2 after pixel shuffle
DEFAULT_LONGEST_EDGE = 4 * TILE_SIZE  # the image processor's size.longest_edge (1456)
MAX_IMAGE_SIDE = 4096  # the processor caps either side at 4k
MAX_GRID = 6  # the tokenizer has <row_1_col_1> .. <row_6_col_6>

IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
ROW_COL_TOKEN = "<row_{}_col_{}>"


def idefics3_resize(width: int, height: int, longest_edge: int = DEFAULT_LONGEST_EDGE) -> tuple[int, int]:
    """(width, height) after the processor's first resize: the long side becomes
    ``longest_edge``, the other keeps the aspect ratio (truncated, then made even),
    and neither side exceeds 4096."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    if width >= height:
        w, h = longest_edge, int(longest_edge / aspect)
        h += h % 2
    else:
        h, w = longest_edge, int(longest_edge * aspect)
        w += w % 2
    w, h = max(w, 1), max(h, 1)
    aspect = w / h
    if w >= h and w > MAX_IMAGE_SIDE:
        w, h = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / aspect)
    elif h > w and h > MAX_IMAGE_SIDE:
        h, w = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * aspect)
    return max(w, 1), max(h, 1)


def idefics3_tiles(width: int, height: int, longest_edge: int = DEFAULT_LONGEST_EDGE,
                   tile: int = TILE_SIZE) -> tuple[int, int]:
    """``(rows, cols)`` of 364x364 tiles an image is split into; (1, 1) means no split.

    After :func:`idefics3_resize`, the long side is rounded up to a multiple of the
    tile, the short side is rescaled with it (same aspect, truncated) and rounded up
    too.
    """
    w, h = idefics3_resize(width, height, longest_edge)
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h // tile, w // tile


def idefics3_image_tokens(width: int, height: int, splitting: bool,
                          longest_edge: int = DEFAULT_LONGEST_EDGE) -> int:
    if not splitting:
        return TOKENS_PER_TILE
    rows, cols = idefics3_tiles(width, height, longest_edge)
    tiles = rows * cols
    return TOKENS_PER_TILE * (tiles + 1 if tiles > 1 else 1)


def finish_text(rendered: str, strip_text: bool = True) -> str:
    """The rendered conversation as the processor gets it: T2Vid strips it (the template's
    final newline goes); ``strip_text=False`` leaves the template's text as it is."""
    return rendered.strip() if strip_text else rendered


class Idefics3(Model):
    names = ("idefics3",)
    output_format = "minicpmv"
    OPTIONS: dict[str, Any] = {
        "image_splitting": False,  # do_image_splitting; T2Vid finetunes with False
        "longest_edge": DEFAULT_LONGEST_EDGE,  # size.longest_edge of the image processor
        # chat_template mode: strip the rendered conversation as T2Vid's collator does (no
        # newline after the last <end_of_utterance>); false counts the template's text as is
        "strip_text": True,
        # the processor tokenizes the rendered text with the tokenizer's special tokens
        # (T2Vid's collator, transformers' default): count them too
        "add_special_tokens": True,
    }

    def check_options(self) -> None:
        if not isinstance(self.options["strip_text"], bool):
            raise ConfigError(f"model.options.strip_text: must be true or false (got {self.options['strip_text']!r})")
        edge = self.options["longest_edge"]
        if not isinstance(edge, int) or not TILE_SIZE <= edge <= MAX_GRID * TILE_SIZE:
            raise ConfigError(f"model.options.longest_edge: must be an integer in "
                              f"[{TILE_SIZE}, {MAX_GRID * TILE_SIZE}] (got {edge!r})")

    def visual_tokens(self, width: int, height: int) -> int:
        return idefics3_image_tokens(width, height, bool(self.options["image_splitting"]),
                                     self.options["longest_edge"])

    def format(self, record, frame_counts, frame_names=None, fps=None) -> dict:
        self._check_counts(record, frame_counts)
        return minicpmv_record(record, frame_counts, frame_names)

    @staticmethod
    def collator_view(model_record: dict) -> dict[str, Any]:
        """What T2Vid's Idefics3 collator makes of the record: the ``<image_NN>`` tags
        removed and every turn's text stripped, every image at the start of the first
        user turn, content as lists of ``{"type": "image"}`` / ``{"type": "text"}``
        items ready for the chat template. ``images`` are the paths in order."""
        images = list((model_record.get("image") or {}).values())
        messages, placed = [], False
        for turn in model_record["conversations"]:
            text = IMAGE_KEY_RE.sub("", turn["content"]).strip()
            content: list[dict] = []
            if turn["role"] == "user" and not placed:
                content = [{"type": "image"} for _ in images]
                placed = True
            content.append({"type": "text", "text": text})
            messages.append({"role": turn["role"], "content": content})
        return {"messages": messages, "images": images}

    # -- chat_template mode ------------------------------------------------------------
    def placeholder_tokens(self) -> list[str]:
        tokens = [IMAGE_TOKEN, FAKE_TOKEN, GLOBAL_TOKEN]
        if self.options["image_splitting"]:
            n = math.ceil(self.options["longest_edge"] / TILE_SIZE)
            tokens += [ROW_COL_TOKEN.format(r, c) for r in range(1, n + 1) for c in range(1, n + 1)]
        return tokens

    def check_tokenizer(self, tok) -> None:
        super().check_tokenizer(tok)
        if self.token_count == "chat_template":
            probe = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                  {"type": "text", "text": "q"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
            text = tok.apply_chat_template(probe, tokenize=False)
            if text.count(IMAGE_TOKEN) != 2:
                raise ConfigError(f"the chat template of {self.tokenizer_name!r} does not write one "
                                  f"{IMAGE_TOKEN} per image item; set model.options.chat_template")

    def image_placeholder(self, width: int, height: int) -> str:
        """The processor's expansion of one ``<image>``: tiles row by row, each
        ``<fake_token_around_image><row_r_col_c>`` + 169 ``<image>``, a newline after
        each row, then a newline and the global image
        ``<fake_token_around_image><global-img>`` + 169 ``<image>`` + ``<fake_token_around_image>``."""
        queries = IMAGE_TOKEN * TOKENS_PER_TILE
        global_image = FAKE_TOKEN + GLOBAL_TOKEN + queries + FAKE_TOKEN
        if not self.options["image_splitting"]:
            return global_image
        rows, cols = idefics3_tiles(width, height, self.options["longest_edge"])
        if rows * cols == 1:
            return global_image
        text = ""
        for r in range(1, rows + 1):
            text += "".join(FAKE_TOKEN + ROW_COL_TOKEN.format(r, c) + queries for c in range(1, cols + 1))
            text += "\n"
        return text + "\n" + global_image

    def templated_text(self, model_record: dict, shapes: Sequence[MediaShape]) -> str:
        sizes = image_sizes(shapes)
        view = self.collator_view(model_record)
        if len(view["images"]) != len(sizes):
            raise ValueError(f"{len(view['images'])} images in the record, {len(sizes)} in the shapes")
        parts = finish_text(self.render_template(view["messages"]), self.options["strip_text"]).split(IMAGE_TOKEN)
        if len(parts) - 1 != len(sizes):
            raise SampleError(MEDIA_TAG_MISMATCH, f"the templated text holds {len(parts) - 1} {IMAGE_TOKEN} "
                              f"for {len(sizes)} images (a literal {IMAGE_TOKEN} in the text?)")
        out = [parts[0]]
        for (w, h), rest in zip(sizes, parts[1:]):
            out += [self.image_placeholder(w, h), rest]
        return "".join(out)


__all__ = ["Idefics3", "finish_text", "idefics3_resize", "idefics3_tiles", "idefics3_image_tokens", "TILE_SIZE",
           "TOKENS_PER_TILE", "DEFAULT_LONGEST_EDGE"]
