"""T2Vid synthetic "videos": long text rendered as 448x448 pages, one page per frame, as
T2Vid's ``utils/text-to-images/t2vid.py`` renders them (REFERENCE section 5), in the
worker instead of a 36 GB archive of PNGs.

    pages = split_pages(context)             # NLTK word_tokenize tokens, 115 a page
    page = render_page(pages[0], cfg)        # uint8 RGB [448, 448, 3]

* **Page text**: the context is split into tokens by NLTK's ``word_tokenize`` (a
  sentence split with English punkt, then Treebank tokens: punctuation is its own token,
  ``"`` becomes `````` or ``''``, ``can't`` becomes ``ca n't``); every ``words_per_page``
  (115) tokens make a page, joined with single spaces.
* **Wrap**: the page text is split on whitespace; a word's width is the right edge of
  the font's bounding box of ``word + " "``; a word joins the line while the line's
  summed width plus its own is at most ``wrap_width`` (408), else it starts a new line.
* **Drawing**: a white page, black text; the block's height is the sum over lines of
  the bottom of each line's bounding box; drawing starts at y = (size - height) / 2 (a
  float, negative for a full page: no clamp), x = ``margin`` (20), and each line moves y
  down by its own bounding-box bottom.

NLTK's English punkt data comes from an installed package, never a download: NLTK's
own data folders (``nltk.download("punkt_tab")`` puts it there) or, as ``make setup``
installs it, the ``punkt_tab`` folder inside the llama-index-core wheel.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import PagesConfig
from ..errors import ConfigError, NO_FRAMES, SampleError
from ..types import MediaPlan

TEXT_COLOR = (0, 0, 0)
PAGE_COLOR = (255, 255, 255)
#: The wheels that carry NLTK's punkt_tab data, and where inside them.
PUNKT_PACKAGES = (("llama-index-core", "llama_index/core/_static/nltk_cache"),)


@lru_cache(maxsize=1)
def _word_tokenize():
    """NLTK's ``word_tokenize`` with its English punkt data found (ConfigError if not)."""
    try:
        import nltk
        from nltk.tokenize import word_tokenize
    except ImportError as exc:
        raise ConfigError(f"T2Vid text pages need NLTK ({exc}); make setup installs it") from None
    import importlib.metadata

    for dist, folder in PUNKT_PACKAGES:
        try:
            path = str(importlib.metadata.distribution(dist).locate_file(folder))
        except importlib.metadata.PackageNotFoundError:
            continue
        if os.path.isdir(os.path.join(path, "tokenizers", "punkt_tab", "english")) and path not in nltk.data.path:
            nltk.data.path.append(path)
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise ConfigError("T2Vid text pages need NLTK's English punkt_tab data: `make setup` installs it "
                          "(pip install --no-deps llama-index-core, whose wheel carries it), or run "
                          "python -m nltk.downloader punkt_tab") from None
    return word_tokenize


def page_tokens(text: str) -> list[str]:
    """The context's tokens as T2Vid makes them (NLTK ``word_tokenize``)."""
    return _word_tokenize()(text)


def split_pages(text: str, words_per_page: int = 115) -> list[str]:
    """Pages of ``words_per_page`` tokens each, joined with single spaces."""
    tokens = page_tokens(text)
    return [" ".join(tokens[i:i + words_per_page]) for i in range(0, len(tokens), words_per_page)]


@lru_cache(maxsize=8)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if not os.path.isfile(path):
        raise ConfigError(f"page font {path} not found: install Debian's fonts-dejavu-core (make setup does) "
                          f"or set sampling.pages.font to a .ttf file")
    try:
        return ImageFont.truetype(path, size)
    except OSError as exc:
        raise ConfigError(f"page font {path} cannot be loaded: {exc}") from None


def wrap(text: str, font, width: int) -> list[str]:
    """T2Vid's wrap: whitespace-split words, each ``getbbox(word + " ")[2]`` wide, a word
    joins the line while the summed width stays at most ``width``. A word wider than a
    line is a line of its own (it is not broken)."""
    lines: list[str] = []
    line: list[str] = []
    used = 0
    for word in text.split():
        w = font.getbbox(word + " ")[2]
        if line and used + w > width:
            lines.append(" ".join(line))
            line, used = [], 0
        line.append(word)
        used += w
    if line:
        lines.append(" ".join(line))
    return lines


def render_page(text: str, cfg: PagesConfig = PagesConfig()) -> np.ndarray:
    """One page: black text on white, lines drawn from y = (size - block height) / 2."""
    font = load_font(cfg.font, cfg.font_size)
    lines = wrap(text, font, cfg.wrap_width)
    bottoms = [font.getbbox(line)[3] for line in lines]
    y = (cfg.size - sum(bottoms)) / 2
    page = Image.new("RGB", (cfg.size, cfg.size), PAGE_COLOR)
    draw = ImageDraw.Draw(page)
    for line, bottom in zip(lines, bottoms):
        draw.text((cfg.margin, y), line, fill=TEXT_COLOR, font=font)
        y += bottom
    return np.array(page, dtype=np.uint8)


def plan_pages(text: str, cfg: PagesConfig) -> MediaPlan:
    chunks = split_pages(text, cfg.words_per_page)
    if not chunks:
        raise SampleError(NO_FRAMES, "synthetic context is empty")
    n = len(chunks)
    return MediaPlan("pages", None, cfg.size, cfg.size, list(range(n)), [float(i) for i in range(n)], None,
                     {"pages": chunks})


def render_plan(plan: MediaPlan, cfg: PagesConfig) -> np.ndarray:
    return np.stack([render_page(plan.info["pages"][i], cfg) for i in plan.indices])
