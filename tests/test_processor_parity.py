"""Token parity with the real processors, for the settings each recipe names.

Every processor is asked live: transformers' Qwen2-VL image and video processors,
Idefics3Processor and qwen-vl-utils' ``fetch_video`` (it reads the clips with torchcodec,
its default where torchcodec imports). The answers recorded by
``tests/reference/make_processor_reference.py`` (transformers 5.24.0, qwen-vl-utils 0.0.14
with decord) stay as a second check: mmstream is checked against the recording on every
recorded case, and the live processors against the same recording, so a change upstream
shows as a difference from the recording, not as a silently moved target.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmstream.config import ModelConfig, load_config
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


def clips_folder(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "qvu_clips"
    folder.mkdir(exist_ok=True)
    return folder


def clip_path(folder, clip):
    path = folder / f"c{clip['width']}x{clip['height']}_{clip['frames']}.mp4"
    if not path.exists():
        encode_counter_video(path, num_frames=clip["frames"], fps=clip["fps"], size=(clip["width"], clip["height"]))
    return path


def qwen_utils_plan(folder, path, extra):
    """mmstream's plan of a clip under the qwen-vl-utils preset with a request's fps/max_frames,
    and the model with the request's total_pixels."""
    cfg = load_config(os.path.join(os.path.dirname(HERE), "configs", "qwen2vl_qwen_vl_utils.yaml"))
    sampling = cfg.sampling
    sampling.fps = extra["fps"]
    sampling.max_frames = extra.get("max_frames", sampling.max_frames)
    plan = plan_media(MediaRef("video", path.name, root=str(folder)), sampling)
    options = dict(cfg.model.options, video_total_pixels=extra.get("total_pixels", QWEN_UTILS_TOTAL_PIXELS))
    return plan, get_model(ModelConfig(name="qwen2-vl", options=options), load=False)


@pytest.mark.parametrize("case", REF["fetch_video"],
                         ids=[f"{c['clip']['width']}x{c['clip']['height']}-{c['clip']['frames']}-{c['request']}"
                              for c in REF["fetch_video"]])
def test_qwen_vl_utils_preset_equals_fetch_video(case, tmp_path_factory):
    folder = clips_folder(tmp_path_factory)
    path = clip_path(folder, case["clip"])
    plan, m = qwen_utils_plan(folder, path, case["extra"])
    assert plan.num_frames == case["nframes"]
    assert plan.fps == pytest.approx(case["sample_fps"])
    assert list(m.resized("video", plan.num_frames, plan.width, plan.height)) == case["resized"]


# cases the live video processor runs: every size and setting at 1, 2, 7 and 8 frames (odd and
# even counts, one or several temporal patches); the per-frame cap of a total budget also at 24
# and 33 frames, where it binds (its share depends on the frame count). The 24/33-frame cases
# at full size cost seconds each and add nothing the 7/8-frame ones do not check without a cap.
LIVE_VIDEO_CASES = [c for c in REF["video_processor"]
                    if c["frames"] <= 8 or c["setting"] == "total_budget"]


@pytest.fixture(scope="module")
def video_processors():
    from transformers import Qwen2VLVideoProcessor

    return {name: Qwen2VLVideoProcessor(**{"cap_pixels_per_frame": False, **kwargs})
            for name, kwargs in {c["setting"]: c["kwargs"] for c in REF["video_processor"]}.items()}


def test_live_video_processor_equals_the_recording_and_mmstream(video_processors):
    assert len(LIVE_VIDEO_CASES) == 112
    for case in LIVE_VIDEO_CASES:
        video = np.zeros((case["frames"], case["height"], case["width"], 3), np.uint8)
        out = video_processors[case["setting"]](videos=[video], return_tensors="np", do_rescale=False,
                                                do_normalize=False)
        live = out["video_grid_thw"][0].tolist()
        mine = list(video_model(case).grid_thw("video", case["frames"], case["width"], case["height"]))
        assert live == case["grid_thw"] == mine, case


def test_live_fetch_video_equals_mmstream_frame_for_frame(tmp_path_factory):
    """qwen-vl-utils' fetch_video on each recorded clip and request: its frame count, frame
    size and sample fps equal the recording and mmstream's plan, and the frames it returns
    are the source frames mmstream's plan picks (read from the counters drawn in them)."""
    from qwen_vl_utils import fetch_video

    from mmstream.synth import read_counter

    folder = clips_folder(tmp_path_factory)
    for case in REF["fetch_video"]:
        path = clip_path(folder, case["clip"])
        video, sample_fps = fetch_video({"video": str(path), **case["extra"]}, return_video_sample_fps=True)
        t, _, rh, rw = video.shape
        assert (t, [rh, rw], float(sample_fps)) == (case["nframes"], case["resized"], case["sample_fps"]), case
        plan, m = qwen_utils_plan(folder, path, case["extra"])
        frames = video.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
        assert [read_counter(f) for f in frames] == plan.indices, case
        assert list(m.resized("video", plan.num_frames, plan.width, plan.height)) == [rh, rw]


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
