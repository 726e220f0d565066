"""T2Vid text pages rendered on the fly (REFERENCE section 5)."""
import numpy as np
import pytest

from mmstream.config import PagesConfig, SamplingConfig
from mmstream.errors import ConfigError
from mmstream.media import decode_media, plan_media
from mmstream.media.pages import load_font, render_page, split_pages, wrap
from mmstream.types import MediaRef

CFG = PagesConfig()


def test_known_context_gives_expected_pages():
    context = " ".join(f"w{i}" for i in range(300))  # 300 words: 115 + 115 + 70
    chunks = split_pages(context)
    assert [len(c.split()) for c in chunks] == [115, 115, 70]
    s = SamplingConfig(max_frames=2)  # pages are never downsampled
    plan = plan_media(MediaRef("pages", None, text=context), s)
    clip = decode_media(plan, s)
    assert clip.frames.shape == (3, 448, 448, 3) and clip.frames.dtype == np.uint8


def test_page_is_legible_and_inside_margins():
    text = "The quick brown fox jumps over the lazy dog. " * 8 + "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3
    page = render_page(text, CFG)
    dark = page.min(axis=2) < 128
    assert dark.mean() > 0.02, "page is blank"
    cols = np.where(dark.any(axis=0))[0]
    assert cols.min() >= CFG.margin - 1 and cols.max() <= CFG.margin + CFG.wrap_width + 1
    rows = np.where(dark.any(axis=1))[0]
    top, bottom = rows.min(), CFG.size - 1 - rows.max()
    assert abs(top - bottom) < 30, "block is centred vertically"
    assert (page[0, 0] == 255).all(), "white background"


def test_long_word_wraps_by_characters():
    font = load_font(CFG.font, CFG.font_size)
    lines = wrap("x" * 400, font, CFG.wrap_width)
    assert len(lines) > 1 and all(font.getlength(l) <= CFG.wrap_width for l in lines)
    assert "".join(lines) == "x" * 400


def test_missing_font_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="font"):
        render_page("hello", PagesConfig(font="/nonexistent/font.ttf"))
