"""Visual token counts: given a frame size, expect what the model's processor produces.

Idefics3 and Qwen2-VL images are checked against the real ``transformers``
processors (PIL backends; torchvision is not installed, so Qwen2-VL's video
processor cannot be built and its video counts are checked against REFERENCE's
verified examples). MiniCPM-V has no processor in ``transformers``: its counts are
checked against REFERENCE and a table worked out by hand from the slice rule.
"""
from __future__ import annotations


import pytest
from PIL import Image

from mmstream.config import ModelConfig
from mmstream.errors import ConfigError
from mmstream.models import get_model, model_names
from mmstream.models.idefics3 import Idefics3, idefics3_tiles
from mmstream.models.minicpmv import minicpmv_slice_grid
from mmstream.models.qwen2vl import qwen_grid_thw, smart_resize
from hf_compat import pil_image_processor
from tiny_tok import make_tokenizer

IDEFICS3_SPECIALS = (["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
                     + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])


def model(name, **options):
    return get_model(ModelConfig(name=name, options=options))


# -- registry ------------------------------------------------------------------------------

def test_registry_names():
    assert model_names() == ["idefics3", "minicpmv-2.5", "minicpmv-2.6", "qwen2-vl", "qwen2.5-vl"]


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="minicpmv-2.5.*qwen2-vl"):
        get_model(ModelConfig(name="llava-next"))


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="max_slice_num"):
        model("minicpmv-2.6", max_slice_num=2)


@pytest.mark.parametrize("path", ["/nonexistent/tokenizer_dir", "./no/such/tok", "models/a/b"])
def test_missing_tokenizer_path_fails_at_construction(path):
    with pytest.raises(ConfigError, match="does not exist"):
        get_model(ModelConfig(name="minicpmv-2.5", tokenizer=path))


def test_unloadable_tokenizer_dir_fails_at_construction(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        get_model(ModelConfig(name="minicpmv-2.5", tokenizer=str(tmp_path / "empty")))


# -- MiniCPM-V -------------------------------------------------------------------------------

def test_minicpmv_reference_examples():
    assert model("minicpmv-2.6", max_slice_nums=2).visual_tokens(640, 360) == 192
    assert model("minicpmv-2.6", max_slice_nums=9).visual_tokens(1280, 720) == 448


# (width, height, max_slice_nums, 2.6 tokens), each worked out by hand from the rule:
# ratio = W*H/448^2, multiple = min(ceil(ratio), max_slice_nums), candidates from
# {multiple-1, multiple, multiple+1}, best |log(W/H) - log(cols/rows)|.
MINICPMV26_TABLE = [
    (448, 448, 9, 64),      # ratio 1.0: one crop
    (500, 400, 9, 64),      # ratio 0.9965: one crop
    (320, 240, 9, 64),      # ratio 0.38
    (449, 448, 9, 192),     # ratio 1.002 -> 2; (2,1) err 0.691 beats (1,2), (3,1), (1,3)
    (640, 360, 1, 64),      # max_slice_nums 1: never sliced
    (640, 360, 2, 192),     # REFERENCE: (2,1)
    (360, 640, 2, 192),     # tall: (1,2)
    (640, 480, 9, 192),     # ratio 1.53 -> 2; (2,1) err 0.405
    (896, 448, 9, 192),     # ratio exactly 2 -> 2; (2,1) exact
    (897, 448, 9, 192),     # ratio 2.002 -> 3; candidates 2,3,4: (2,1) err 0.001
    (1344, 448, 9, 256),    # ratio 3 -> 3; (3,1) exact
    (1344, 448, 2, 192),    # capped at 2: (2,1)
    (1000, 1000, 9, 320),   # ratio 4.98 -> 5; candidates 4,5,6: (2,2) exact
    (1000, 1000, 4, 320),   # capped at 4: candidates 3,4: (2,2)
    (1024, 768, 9, 320),    # ratio 3.92 -> 4; (2,2) err 0.288
    (1280, 720, 1, 64),
    (1280, 720, 2, 192),    # capped at 2: (2,1)
    (1280, 720, 9, 448),    # REFERENCE: (3,2)
    (1920, 1080, 9, 576),   # ratio 10.3 -> 9; candidates 8,9: (4,2) err 0.118
    (1080, 1920, 9, 576),   # tall: (2,4)
    (2560, 1440, 9, 576),   # ratio 18.4 -> 9: (4,2)
    (4000, 200, 9, 384),    # extreme wide: ratio 3.99 -> 4; candidates 3,4,5: (5,1)
    (200, 4000, 9, 384),    # extreme tall: (1,5)
    (4000, 200, 2, 192),    # extreme wide, capped at 2: (2,1)
    (300, 2000, 9, 320),    # ratio 2.99 -> 3; candidates 2,3,4: (1,4) err 0.511
]


@pytest.mark.parametrize("width,height,max_slices,expected", MINICPMV26_TABLE)
def test_minicpmv26_hand_table(width, height, max_slices, expected):
    assert model("minicpmv-2.6", max_slice_nums=max_slices).visual_tokens(width, height) == expected


def test_minicpmv_grid_first_wins_on_ties():
    # square image, only slice count 2 allowed: (1,2) and (2,1) tie; the first wins
    assert minicpmv_slice_grid(600, 600, 2) == (1, 2)
    assert minicpmv_slice_grid(1280, 720, 9) == (3, 2)
    assert minicpmv_slice_grid(448, 448, 9) is None


def test_minicpmv25_is_96_per_frame_without_slicing():
    m = model("minicpmv-2.5")  # T2Vid: max_slice_nums 1
    for w, h in [(448, 448), (1920, 1080), (200, 4000), (64, 36)]:
        assert m.visual_tokens(w, h) == 96
    assert m.media_tokens("video", 24, 640, 360) == 24 * 96
    assert m.media_tokens("pages", 7, 448, 448) == 7 * 96
    assert m.media_tokens("image", 1, 640, 360) == 96
    # with slicing, 2.5 uses 96 queries per crop: 1280x720 at 9 slices is (3,2) -> 7 crops
    assert model("minicpmv-2.5", max_slice_nums=9).visual_tokens(1280, 720) == 7 * 96


# -- Idefics3 against transformers' Idefics3Processor ----------------------------------------

@pytest.fixture(scope="module")
def idefics3_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = make_tokenizer(tmp_path_factory.mktemp("idefics3_tok"), IDEFICS3_SPECIALS)
    return AutoTokenizer.from_pretrained(path)


def processor_image_tokens(tokenizer, width, height, splitting, longest_edge=1456):
    from transformers import Idefics3Processor

    ip = pil_image_processor("idefics3", "Idefics3ImageProcessor", do_image_splitting=splitting,
                             size={"longest_edge": longest_edge})
    proc = Idefics3Processor(image_processor=ip, tokenizer=tokenizer)
    out = proc(text=["what <image> is"], images=[[Image.new("RGB", (width, height), (90, 30, 200))]])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return sum(1 for i in out["input_ids"][0] if i == image_id)


IDEFICS3_SIZES = [(640, 360), (360, 640), (100, 50), (1456, 364), (2000, 300), (364, 364),
                  (365, 364), (1920, 1080), (300, 1000), (50, 50), (729, 400), (1000, 999)]


@pytest.mark.parametrize("splitting", [False, True])
@pytest.mark.parametrize("width,height", IDEFICS3_SIZES)
def test_idefics3_matches_processor(idefics3_tokenizer, width, height, splitting):
    ours = model("idefics3", image_splitting=splitting).visual_tokens(width, height)
    assert ours == processor_image_tokens(idefics3_tokenizer, width, height, splitting)


@pytest.mark.parametrize("longest_edge", [364, 728, 1000, 1092])
@pytest.mark.parametrize("width,height", [(640, 360), (300, 1000), (1000, 999), (1000, 350), (350, 1000)])
def test_idefics3_longest_edge_matches_processor(idefics3_tokenizer, width, height, longest_edge):
    # with a longest_edge that is not a multiple of 364 the short side is rescaled with
    # the long one before rounding up: 1000x350 at 1000 -> 1092x382 -> 2 x 3 tiles, not 1 x 3
    ours = model("idefics3", image_splitting=True, longest_edge=longest_edge).visual_tokens(width, height)
    assert ours == processor_image_tokens(idefics3_tokenizer, width, height, True, longest_edge)


def test_idefics3_by_hand():
    # unsplit (T2Vid): squashed to 364x364, 169 whatever the size
    assert model("idefics3").visual_tokens(1920, 1080) == 169
    # split: 640x360 -> 1456x820 -> 4 cols x 3 rows + global = 13 tiles
    assert idefics3_tiles(640, 360) == (3, 4)
    assert model("idefics3", image_splitting=True).visual_tokens(640, 360) == 13 * 169
    # 1456x364 stays 1456x364: 1 x 4 + global
    assert model("idefics3", image_splitting=True).visual_tokens(1456, 364) == 5 * 169
    # longest_edge 364: one tile, no global copy
    assert model("idefics3", image_splitting=True, longest_edge=364).visual_tokens(640, 360) == 169
    assert model("idefics3").media_tokens("video", 65, 640, 360) == 65 * 169


# -- Qwen2-VL ----------------------------------------------------------------------------------

QWEN_IMAGE_CASES = [
    # (width, height, min_pixels, max_pixels)
    (640, 360, 56 * 56, 28 * 28 * 1280),
    (854, 480, 56 * 56, 28 * 28 * 1280),
    (4000, 3000, 56 * 56, 28 * 28 * 1280),  # shrunk to max_pixels
    (30, 20, 56 * 56, 28 * 28 * 1280),  # grown to min_pixels
    (1000, 10, 56 * 56, 28 * 28 * 1280),  # aspect 100
    (640, 360, 128 * 28 * 28, 768 * 28 * 28),
    (1920, 1080, 128 * 28 * 28, 256 * 28 * 28),
    (200, 150, 256 * 28 * 28, 1024 * 28 * 28),
    (1234, 567, 4 * 28 * 28, 16 * 28 * 28),
]


@pytest.mark.parametrize("width,height,min_pixels,max_pixels", QWEN_IMAGE_CASES)
def test_qwen_image_grid_matches_processor(width, height, min_pixels, max_pixels):
    ip = pil_image_processor("qwen2_vl", "Qwen2VLImageProcessor", min_pixels=min_pixels, max_pixels=max_pixels)
    grid = ip(images=[Image.new("RGB", (width, height))])["image_grid_thw"].tolist()[0]
    assert list(qwen_grid_thw(1, width, height, min_pixels, max_pixels)) == grid
    m = model("qwen2-vl", min_pixels=min_pixels, max_pixels=max_pixels)
    assert m.visual_tokens(width, height) == grid[0] * grid[1] * grid[2] // 4
    assert m.media_tokens("image", 1, width, height) == grid[0] * grid[1] * grid[2] // 4


def test_qwen_video_reference_examples():
    m = model("qwen2-vl")  # default video pixel limits
    assert qwen_grid_thw(8, 640, 360, 128 * 28 * 28, 768 * 28 * 28) == (4, 26, 46)
    assert m.media_tokens("video", 8, 640, 360) == 1196
    assert qwen_grid_thw(32, 854, 480, 128 * 28 * 28, 768 * 28 * 28) == (16, 34, 60)
    assert m.media_tokens("video", 32, 854, 480) == 8160
    assert model("qwen2.5-vl").media_tokens("video", 32, 854, 480) == 8160


def test_qwen_odd_frames_repeat_the_last():
    m = model("qwen2-vl")
    assert m.media_tokens("video", 9, 640, 360) == m.media_tokens("video", 10, 640, 360) == 5 * 299
    assert m.media_tokens("video", 1, 640, 360) == 299


def test_smart_resize_rounding():
    assert smart_resize(360, 640) == (364, 644)
    assert smart_resize(480, 854) == (476, 840)  # 854/28 = 30.5 rounds to even: 30
    with pytest.raises(ValueError):
        smart_resize(10, 2500)  # aspect above 200


@pytest.mark.parametrize("rule,counts", [("drop_last", {1: 2, 2: 2, 7: 6, 8: 8, 25: 24}),
                                          ("repeat_last", {1: 2, 7: 8, 8: 8}),
                                          ("off", {1: 1, 7: 7})])
def test_qwen_frame_count_rule(rule, counts):
    m = model("qwen2-vl", even_frames=rule)
    assert {n: m.frame_count_rule(n) for n in counts} == counts


def test_other_families_keep_frame_counts():
    for name in ("minicpmv-2.5", "minicpmv-2.6", "idefics3"):
        assert model(name).frame_count_rule(25) == 25


# -- chat_template counting against Idefics3Processor ------------------------------------------

@pytest.mark.parametrize("splitting", [False, True])
def test_idefics3_chat_template_total_matches_processor(tmp_path, splitting):
    """The whole templated sequence, as T2Vid's collator builds it (the rendered text
    stripped), counted by the real processor: every image expanded (tiles, row tags,
    newlines, global image)."""
    from transformers import AutoTokenizer, Idefics3Processor

    from mmstream.models import media_shapes
    from mmstream.models.idefics3 import finish_text
    from mmstream.types import MediaPlan, MediaRef, Record, Turn
    from tiny_tok import LIST_TEMPLATE

    # "\n" is a token here, so the newlines of the split layout are counted too
    path = make_tokenizer(tmp_path / "tok", IDEFICS3_SPECIALS + ["\n"], chat_template=LIST_TEMPLATE)
    m = get_model(ModelConfig(name="idefics3", tokenizer=path, token_count="chat_template",
                              options={"image_splitting": splitting}))
    rec = Record(key="k", source="s", media=[MediaRef("video", "v.mp4")],
                 turns=[Turn("user", "<video>\nwhat is the video ?"), Turn("assistant", "a video"),
                        Turn("user", "what is it ?"), Turn("assistant", "the video")])
    plan = MediaPlan("video", "v.mp4", 640, 360, [0, 1], [0.0, 1.0])
    model_record = m.format_plans(rec, [plan])
    tokens = m.count_tokens(rec, model_record, media_shapes([plan]))

    tok = AutoTokenizer.from_pretrained(path)
    ip = pil_image_processor("idefics3", "Idefics3ImageProcessor", do_image_splitting=splitting)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok)
    text = finish_text(tok.apply_chat_template(Idefics3.collator_view(model_record)["messages"], tokenize=False))
    frame = Image.new("RGB", (640, 360), (10, 200, 30))
    ids = proc(text=[text], images=[[frame, frame]])["input_ids"][0]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert tokens["total"] == len(ids)
    assert tokens["visual"] == sum(1 for i in ids if i == image_id) == 2 * (13 if splitting else 1) * 169
