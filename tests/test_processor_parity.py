"""Token parity with the real processors, for the settings each recipe names.

The Qwen2-VL video processor and qwen-vl-utils need torchvision, which does not import
beside the CPU torch these tests run on: their answers were recorded by
``tests/reference/make_processor_reference.py`` (in an environment with torchvision) and
are checked here; where torchvision imports, the test also asks them live. The image
processors and Idefics3Processor are asked live.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmstream.config import ModelConfig, SamplingConfig, load_config
from mmstream.media import plan_media
from mmstream.models import get_model
from mmstream.synth import encode_counter_video
from mmstream.types import MediaRef

HERE = os.path.dirname(os.path.abspath(__file__))
REF = json.load(open(os.path.join(HERE, "reference", "processors.json")))
QWEN_UTILS_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # qwen-vl-utils' default total_pixels


def qwen(**options):
    return get_model(ModelConfig(name="qwen2-vl", options=options), load=False)


def video_model(case):
    kw = case["kwargs"]
    if case["setting"] == "pai_image_limits":
        return qwen(video_min_pixels=kw["size"]["shortest_edge"], video_max_pixels=kw["size"]["longest_edge"])
    if case["setting"] == "total_budget":
        return qwen(video_total_pixels=int(kw["max_video_tokens"] * 28 * 28 * 0.9))
    return qwen()


@pytest.mark.parametrize("case", REF["video_processor"],
                         ids=[f"{c['setting']}-{c['width']}x{c['height']}-{c['frames']}" for c in REF["video_processor"]])
def test_qwen_video_grid_equals_the_video_processor(case):
    m = video_model(case)
    assert list(m.grid_thw("video", case["frames"], case["width"], case["height"])) == case["grid_thw"]
    t, h, w = case["grid_thw"]
    assert m.media_tokens("video", case["frames"], case["width"], case["height"]) == t * h * w // 4


def test_the_pai_recipe_counts_frames_with_the_image_limits():
    cfg = load_config(os.path.join(os.path.dirname(HERE), "configs", "qwen2vl_megatron.yaml"))
    m = get_model(cfg.model, load=False)
    cases = [c for c in REF["video_processor"] if c["setting"] == "pai_image_limits"]
    assert len(cases) == 48
    for c in cases:
        assert list(m.grid_thw("video", c["frames"], c["width"], c["height"])) == c["grid_thw"]
    assert m.grid_thw("video", 2, 320, 240)[1:] == (18, 22)  # 252x308: 9 x 11 = 99 tokens per temporal patch


@pytest.mark.parametrize("case", REF["fetch_video"],
                         ids=[f"{c['clip']['width']}x{c['clip']['height']}-{c['clip']['frames']}-{c['request']}"
                              for c in REF["fetch_video"]])
def test_qwen_vl_utils_preset_equals_fetch_video(case, tmp_path_factory):
    clip, extra = case["clip"], case["extra"]
    folder = tmp_path_factory.getbasetemp() / "qvu_clips"
    folder.mkdir(exist_ok=True)
    path = folder / f"c{clip['width']}x{clip['height']}_{clip['frames']}.mp4"
    if not path.exists():
        encode_counter_video(path, num_frames=clip["frames"], fps=clip["fps"], size=(clip["width"], clip["height"]))
    cfg = load_config(os.path.join(os.path.dirname(HERE), "configs", "qwen2vl_qwen_vl_utils.yaml"))
    sampling = cfg.sampling
    sampling.fps = extra["fps"]
    sampling.max_frames = extra.get("max_frames", sampling.max_frames)
    plan = plan_media(MediaRef("video", path.name, root=str(folder)), sampling)
    assert plan.num_frames == case["nframes"]
    assert plan.fps == pytest.approx(case["sample_fps"])
    options = dict(cfg.model.options, video_total_pixels=extra.get("total_pixels", QWEN_UTILS_TOTAL_PIXELS))
    m = get_model(ModelConfig(name="qwen2-vl", options=options), load=False)
    assert list(m.resized("video", plan.num_frames, plan.width, plan.height)) == case["resized"]


def test_live_video_processor_where_torchvision_imports():
    pytest.importorskip("torchvision", reason="torchvision does not import beside torch 2.13 (the recorded "
                                              "answers above stand in for it)")
    from transformers import Qwen2VLVideoProcessor

    for case in REF["video_processor"][::11]:
        proc = Qwen2VLVideoProcessor(**case["kwargs"])
        video = np.zeros((case["frames"], case["height"], case["width"], 3), np.uint8)
        assert proc(videos=[video], return_tensors="np")["video_grid_thw"][0].tolist() == case["grid_thw"]


# -- images, live ------------------------------------------------------------------------------

SIZES = [(320, 240), (640, 360), (1280, 720), (360, 640), (448, 448), (1920, 1080), (100, 60), (30, 20)]


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("limits", [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28)])
def test_qwen_image_grid_equals_the_image_processor(family, limits):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(min_pixels=limits[0], max_pixels=limits[1])
    m = get_model(ModelConfig(name=family, options={"min_pixels": limits[0], "max_pixels": limits[1]}), load=False)
    for w, h in SIZES:
        grid = ip(images=[Image.new("RGB", (w, h))])["image_grid_thw"].tolist()[0]
        assert list(m.grid_thw("image", 1, w, h)) == grid, (w, h)


@pytest.fixture(scope="module")
def idefics3_tok(tmp_path_factory):
    from tiny_tok import make_tokenizer
    from test_models_tokens import IDEFICS3_SPECIALS
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("i3"), IDEFICS3_SPECIALS))


@pytest.mark.parametrize("splitting,longest_edge", [(False, 1456), (True, 1456), (True, 728), (True, 1092)])
def test_idefics3_tokens_of_a_video_equal_the_processors(idefics3_tok, splitting, longest_edge):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    proc = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(
        do_image_splitting=splitting, size={"longest_edge": longest_edge}), tokenizer=idefics3_tok)
    image_id = idefics3_tok.convert_tokens_to_ids("<image>")
    m = get_model(ModelConfig(name="idefics3", options={"image_splitting": splitting, "longest_edge": longest_edge}),
                  load=False)
    # the processor's cost is per frame (splitting upscales every frame to longest_edge first), and a
    # video's tokens are its frames' sum: all six counts unsplit, the first three with splitting
    sizes = [(1280, 720), (360, 640), (448, 448), (640, 360), (100, 60), (64, 48)]
    counts = [1, 2, 7, 8, 24, 33] if not splitting else [1, 2, 7]
    for (w, h), t in zip(sizes, counts):
        frames = [Image.new("RGB", (w, h))] * t
        out = proc(text=["q " + "<image>" * t], images=[frames])
        assert m.media_tokens("video", t, w, h) == sum(1 for i in out["input_ids"][0] if i == image_id), (w, h, t)
