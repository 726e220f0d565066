"""T2Vid text pages exactly as T2Vid's t2vid.py makes them (REFERENCE section 5)."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmstream import StreamingDataset
from mmstream.config import PagesConfig, SamplingConfig
from mmstream.errors import ConfigError
from mmstream.media import decode_media, plan_media
from mmstream.media.pages import load_font, page_tokens, render_page, split_pages, wrap
from mmstream.types import Drop, MediaRef, Sample

CFG = PagesConfig()


# -- page text: NLTK word_tokenize tokens, 115 a page ---------------------------------------

@pytest.mark.parametrize("text,tokens", [
    ("(tell) life speed,", ["(", "tell", ")", "life", "speed", ","]),
    ('He said "hi there" twice.', ["He", "said", "``", "hi", "there", "''", "twice", "."]),
    ("I can't, won't; don't!", ["I", "ca", "n't", ",", "wo", "n't", ";", "do", "n't", "!"]),
    ("A well-known e-mail, 3.5-4 km or 1,000 people (50%).",
     ["A", "well-known", "e-mail", ",", "3.5-4", "km", "or", "1,000", "people", "(", "50", "%", ")", "."]),
    ("Dr. Smith's dog... Really?", ["Dr.", "Smith", "'s", "dog", "...", "Really", "?"]),
])
def test_page_tokens_follow_word_tokenize(text, tokens):
    assert page_tokens(text) == tokens


def test_pages_are_115_tokens_joined_by_single_spaces():
    unit = "speed, "  # two tokens per unit: "speed" and ","
    exactly_two = unit * 115  # 230 tokens
    pages = split_pages(exactly_two)
    assert len(pages) == 2 and all(len(p.split(" ")) == 115 for p in pages)
    assert pages[0].startswith("speed , speed , ")
    assert len(split_pages(exactly_two + "end")) == 3 and split_pages(exactly_two + "end")[2] == "end"
    assert split_pages("(tell) life speed,") == ["( tell ) life speed ,"]


# -- wrap and drawing, from the rule as REFERENCE states it ---------------------------------

def reference_lines(text, font, width):
    """REFERENCE 5: words by whitespace; width of a word = right edge of the bbox of word + " ";
    a word joins the line while the line's summed width plus it is at most width."""
    lines, cur, used = [], [], 0
    for word in text.split():
        w = font.getbbox(word + " ")[2]
        if cur and used + w > width:
            lines.append(" ".join(cur))
            cur, used = [], 0
        cur.append(word)
        used += w
    return lines + ([" ".join(cur)] if cur else [])


def reference_page(text, cfg):
    font = load_font(cfg.font, cfg.font_size)
    lines = reference_lines(text, font, cfg.size - 2 * cfg.margin)
    heights = [font.getbbox(line)[3] for line in lines]
    y = (cfg.size - sum(heights)) / 2  # a float, not clamped
    page = Image.new("RGB", (cfg.size, cfg.size), "white")
    draw = ImageDraw.Draw(page)
    for line, h in zip(lines, heights):
        draw.text((cfg.margin, y), line, fill="black", font=font)
        y += h
    return np.asarray(page), y


CONTEXTS = {
    "prose": 'The "quick" brown fox (a well-known one) can\'t jump 3.5-4 m; it tries anyway. ' * 4,
    "numbers": " ".join(f"{i},{i * 7}.5" for i in range(40)),
    "overflow": " ".join(["Pneumonoultramicroscopic", "internationalisation,"] * 60),  # far more than 448 px
}


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_pages_equal_the_reference_rule_pixel_for_pixel(name):
    font = load_font(CFG.font, CFG.font_size)
    for page_text in split_pages(CONTEXTS[name]):
        assert wrap(page_text, font, CFG.wrap_width) == reference_lines(page_text, font, 408)
        expected, _ = reference_page(page_text, CFG)
        got = render_page(page_text, CFG)
        assert got.shape == (448, 448, 3) and np.array_equal(got, expected)


def test_a_full_page_starts_above_the_top_edge():
    page_text = split_pages(CONTEXTS["overflow"])[0]
    font = load_font(CFG.font, CFG.font_size)
    lines = wrap(page_text, font, CFG.wrap_width)
    height = sum(font.getbbox(line)[3] for line in lines)
    assert height > 448 and (448 - height) / 2 < 0
    page = render_page(page_text, CFG)
    dark_rows = np.where((page.min(axis=2) < 128).any(axis=1))[0]
    assert dark_rows.min() == 0 and dark_rows.max() == 447  # cut at both edges, as t2vid.py draws it


def test_plan_and_decode_pages():
    context = "speed, " * 150  # 300 tokens: 115 + 115 + 70
    s = SamplingConfig(max_frames=2)  # pages are never downsampled
    plan = plan_media(MediaRef("pages", None, text=context), s)
    assert plan.num_frames == 3
    clip = decode_media(plan, s)
    assert clip.frames.shape == (3, 448, 448, 3) and clip.frames.dtype == np.uint8


def test_missing_font_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="font"):
        render_page("hello", PagesConfig(font="/nonexistent/font.ttf"))


# -- the T2Vid filters' decisions follow the page count -------------------------------------

@pytest.mark.parametrize("model,max_frames", [("minicpmv-2.5", 90), ("idefics3", 65)])
def test_frame_filter_decides_on_t2vid_page_counts(tmp_path, model, max_frames):
    from conftest import write_jsonl

    unit = "speed, "  # 2 tokens but 1 whitespace word: whitespace splitting would count half the pages
    at_cap = unit * (max_frames * 115 // 2) + ("x" if max_frames * 115 % 2 else "")
    over = at_cap + " one more"
    recs = [{"context": c, "question": "What?", "answer": "A."} for c in (at_cap, over)]
    ann = write_jsonl(tmp_path / "raw.jsonl", recs)
    cfg = {"sources": [{"name": "syn", "format": "t2vid_raw", "annotations": ann,
                        "sampling": {"strategy": "none", "max_frames": None},
                        "filter": {"max_frames": max_frames, "one_video_in_first_turn": True}}],
           "model": {"name": model}, "loader": {"shuffle": False}}
    out = {i.key: i for i in StreamingDataset(cfg, emit_drops=True)}
    kept, dropped = out["syn-00000000"], out["syn-00000001"]
    assert isinstance(kept, Sample) and kept.clips[0].num_frames == max_frames
    assert isinstance(dropped, Drop) and dropped.reason == "too_many_frames"
