"""T2Vid synthetic "videos": long text rendered as 448x448 pages, one page per frame
(REFERENCE section 5), in the worker instead of a 36 GB archive of PNGs.

    chunks = split_pages(context)            # 115 words per page
    page = render_page(chunks[0], cfg)       # uint8 RGB [448, 448, 3]
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


def split_pages(text: str, words_per_page: int = 115) -> list[str]:
    """Chunks of ``words_per_page`` whitespace-separated words."""
    words = text.split()
    return [" ".join(words[i:i + words_per_page]) for i in range(0, len(words), words_per_page)]


@lru_cache(maxsize=8)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if not os.path.isfile(path):
        raise ConfigError(f"page font {path} not found: install Debian's fonts-dejavu-core (make setup does) "
                          f"or set sampling.pages.font to a .ttf file")
    return ImageFont.truetype(path, size)


def wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word wider than a line is broken by characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width:  # break an over-long word
            cut = 1
            while cut < len(word) and font.getlength(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def render_page(text: str, cfg: PagesConfig = PagesConfig()) -> np.ndarray:
    """Black text on a white square page, left margin, block centred vertically."""
    font = load_font(cfg.font, cfg.font_size)
    lines = wrap(text, font, cfg.wrap_width)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent
    top = max(0, (cfg.size - line_height * len(lines)) // 2)
    page = Image.new("RGB", (cfg.size, cfg.size), PAGE_COLOR)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((cfg.margin, top + i * line_height), line, fill=TEXT_COLOR, font=font)
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
