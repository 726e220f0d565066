"""``sampling.frame_rule: pai_interval``: a raw video gives the frames and timing that
Pai-Megatron-Patch's extract-then-convert gives (``build_llava_frame_dataset.py
--time-interval 0.5``, then its converter), checked against ``tests/pai_frames.py`` (OpenCV,
as Pai extracts) on 25, 29.97, 30 fps, variable-rate and sub-2 fps videos with drawn frame
counters; and a video and its Pai-extracted folder give the same samples."""
import io
import json
import os
import pickle
import shutil
import tarfile
from fractions import Fraction as F

import numpy as np
import pytest
from PIL import Image

from mmstream import StreamingDataset
from mmstream.config import load_config
from mmstream.errors import ConfigError
from mmstream.media.sampling import pai_interval_indices, pai_interval_step
from mmstream.sinks import run_cache
from mmstream.synth import encode_counter_video, read_counter
from pai_frames import counter_of, pai_config, pai_convert, pai_extract, rgb_of

SIZE = (96, 64)
# name: (encode options, Pai's step at --time-interval 0.5, frames Pai's converter stores)
VIDEOS = {
    "v25": (dict(num_frames=75, fps="25"), 12, 6),            # 0, 12, .., 72: 7 -> 6
    "v2997": (dict(num_frames=100, fps="30000/1001"), 14, 8),  # 0, 14, .., 98: 8
    "v30": (dict(num_frames=61, fps="30"), 15, 4),            # 0, 15, .., 60 (the last frame): 5 -> 4
    # variable rate: 20 frames at 25 fps, then 20 at 10 fps. OpenCV's CAP_PROP_FPS is the average
    # rate (256000/17349 = 14.76, not the 50 fps ffmpeg guesses): every 7th frame, whatever its time
    "vfr": (dict(num_frames=40, pts_list=[F(i, 25) if i < 20 else F(19, 25) + F(i - 19, 10) for i in range(40)]), 7, 6),
    "v15": (dict(num_frames=9, fps="3/2"), 1, 8),             # int(1.5 x 0.5) = 0: every frame, 9 -> 8
}


# -- the rule, as numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("fps,interval,step,rate", [
    (25.0, 0.5, 12, 2.0833333333333335),
    (30000 / 1001, 0.5, 14, 30000 / 1001 / 14),     # 14.985 -> 14: 2.1407 fps
    (30.0, 0.5, 15, 2.0),
    (24000 / 1001, 0.5, 11, 24000 / 1001 / 11),     # 11.988 -> 11
    (60000 / 1001, 0.5, 29, 60000 / 1001 / 29),
    (60.0, 0.5, 30, 2.0),
    (3.9, 0.5, 1, 3.9),                             # under one frame per interval: every frame
    (1.5, 0.5, 1, 1.5),
    (25.0, 1.0, 25, 1.0),                           # the script's own default interval
    (25.0, 0.1, 2, 12.5),                           # 2.5 -> 2
])
def test_step_and_rate(fps, interval, step, rate):
    assert pai_interval_step(fps, interval) == step
    indices, got = pai_interval_indices(3 * step + 1, fps, interval)
    assert indices == [0, step, 2 * step, 3 * step] and got == rate


def test_indices_start_at_frame_0_and_keep_the_last_only_on_the_step():
    assert pai_interval_indices(75, 25.0)[0] == [0, 12, 24, 36, 48, 60, 72]
    assert pai_interval_indices(72, 25.0)[0] == [0, 12, 24, 36, 48, 60]
    assert pai_interval_indices(73, 25.0)[0] == [0, 12, 24, 36, 48, 60, 72]
    assert pai_interval_indices(5, 25.0) == ([0], 25 / 12)   # shorter than one step: frame 0
    assert pai_interval_indices(0, 25.0)[0] == []


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan"), float("inf")])
def test_a_rate_that_is_not_a_positive_number_is_refused(fps):
    with pytest.raises(ValueError):
        pai_interval_step(fps)


def test_the_pai_recipe_sets_it_and_the_knobs_are_checked(tmp_path):
    cfg = load_config("configs/qwen2vl_megatron.yaml")
    assert (cfg.sampling.frame_rule, cfg.sampling.time_interval) == ("pai_interval", 0.5)
    assert cfg.sampling.frame_folders == "as_extracted"
    base = {"sources": [{"name": "s", "annotations": str(tmp_path / "a.json")}]}
    with pytest.raises(ConfigError, match=r"sampling\.time_interval"):
        load_config(dict(base, sampling={"frame_rule": "pai_interval", "time_interval": 0}))
    with pytest.raises(ConfigError, match=r"sampling\.frame_rule"):
        load_config(dict(base, sampling={"frame_rule": "pai"}))


# -- raw videos against Pai's extract-then-convert ----------------------------------------------

@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """``raw/``: the videos alone; ``pai/``: the same files with Pai's JPEG folders beside them;
    ``png/``: with lossless folders (Pai's rule, PNG frames)."""
    raw, pai, png = (tmp_path_factory.mktemp(n) for n in ("raw", "pai", "png"))
    extracted = {}
    for name, (options, _, _) in VIDEOS.items():
        encode_counter_video(raw / f"{name}.mp4", size=SIZE, **options)
        for root in (pai, png):
            shutil.copy(raw / f"{name}.mp4", root / f"{name}.mp4")
        extracted[name] = pai_extract(str(pai / f"{name}.mp4"))
        pai_extract(str(png / f"{name}.mp4"), ext="png")
    return raw, pai, png, extracted


def stream(root, **sampling):
    return {s.record.id: s for s in StreamingDataset(pai_config(root, list(VIDEOS), **sampling))}


def test_the_oracle_is_pais_rule_through_opencv(roots):
    *_, ex = roots
    for name, (_, step, _) in VIDEOS.items():
        assert ex[name]["interval"] == step
        folder = ex[name]["folder"]
        assert ex[name]["kept"] == [counter_of(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    assert ex["v25"]["fps_text"] == "2.0833333333333335"
    assert ex["vfr"]["fps"] == 256000 / 17349       # the average rate, not ffmpeg's guess (50)


def test_a_raw_video_gives_pais_frames_and_second_per_grid_ts(roots):
    raw, _, _, ex = roots
    got = stream(raw)
    assert sorted(got) == sorted(VIDEOS)
    for name, (_, _, stored) in VIDEOS.items():
        names, sgt = pai_convert(ex[name]["folder"])
        clip = got[name].clips[0]
        assert clip.kind == "video" and clip.num_frames == len(names) == stored
        assert [read_counter(f) for f in clip.frames] == [counter_of(p) for p in names]  # every position
        assert list(clip.source_indices) == ex[name]["kept"][:stored]
        assert got[name].model_record["second_per_grid_ts"] == [sgt]  # 1 / float(str(fps / step)), exactly


def test_ffmpegs_2_fps_rule_gave_other_frames(roots):
    """What the recipe did with a raw video before: 2 fps by ffmpeg's rule (6, 18, 31, ...)."""
    raw, _, _, ex = roots
    s = stream(raw, frame_rule="ffmpeg_fps")["v25"]
    assert [read_counter(f) for f in s.clips[0].frames][:3] == [6, 18, 31]
    assert s.model_record["second_per_grid_ts"] == [0.5] != [pai_convert(ex["v25"]["folder"])[1]]


def test_a_video_and_its_extracted_folder_give_the_same_samples(roots):
    raw, pai, png, _ = roots
    from_video, from_jpeg, from_png = stream(raw), stream(pai), stream(png)
    for name in VIDEOS:
        v, j, p = from_video[name], from_jpeg[name], from_png[name]
        assert (j.clips[0].kind, p.clips[0].kind) == ("frames", "frames")
        assert v.model_record == j.model_record == p.model_record
        assert v.tokens == j.tokens == p.tokens
        assert [read_counter(f) for f in v.clips[0].frames] == [read_counter(f) for f in j.clips[0].frames]
        # PNG: OpenCV's decode, stored losslessly, is bit for bit the frame mmstream decodes
        assert np.array_equal(v.clips[0].frames, p.clips[0].frames), name
        assert np.array_equal(p.clips[0].frames[0], rgb_of(pai_convert(str(png / name))[0][0]))


def test_shards_from_raw_videos_hold_what_pais_converter_stores(roots, tmp_path):
    raw, _, _, ex = roots
    names = ["v25", "vfr"]
    summary = run_cache(pai_config(raw, names), str(tmp_path), workers=0, progress=False)
    assert summary["kept"] == 2
    with tarfile.open(tmp_path / "pretrain-000000.tar") as tar:
        parts = {n: tar.extractfile(n).read() for n in tar.getnames()}
    for i, name in enumerate(names):
        files, sgt = pai_convert(ex[name]["folder"])
        videos = pickle.loads(parts[f"s-{i:08d}.videos"])
        counters = [read_counter(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in videos[0]]
        assert counters == [counter_of(p) for p in files]
        assert json.loads(parts[f"s-{i:08d}.json"])["second_per_grid_ts"] == [sgt]
