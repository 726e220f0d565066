"""``sampling.frame_folders: as_extracted``: Pai-extracted frame folders taken as Pai's
converter takes them (every frame, less the last of an odd count; second_per_grid_ts =
1 / the folder's fps), checked against our oracle of Pai's extraction and converter
(``tests/pai_frames.py``) on 25, 29.97 and 30 fps videos with drawn frame counters."""
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmstream import StreamingDataset
from mmstream.config import load_config
from mmstream.errors import ConfigError
from mmstream.sinks import run_cache
from mmstream.synth import encode_counter_video, make_frame_folder, read_counter
from mmstream.types import Drop, Sample
from pai_frames import counter_of, pai_config, pai_convert, pai_extract

# (rate, frames): Pai keeps every int(fps / 2)-th frame from frame 0
VIDEOS = {"v25": ("25", 75),            # every 12th: 7 frames at "2.0833333333333335" fps -> 6
          "v2997": ("30000/1001", 100),  # every 14th: 8 frames at 2.1407... fps
          "v30": ("30", 64)}             # every 15th: 5 frames at "2.0" fps -> 4
SIZE = (96, 64)


@pytest.fixture(scope="module")
def pai_root(tmp_path_factory):
    """Pai's layout: each video with its extracted folder and fps JSON beside it."""
    root = tmp_path_factory.mktemp("pai_frames")
    extracted = {}
    for name, (rate, n) in VIDEOS.items():
        path = encode_counter_video(root / f"{name}.mp4", num_frames=n, fps=rate, size=SIZE)
        extracted[name] = pai_extract(str(path), time_interval=0.5)
    return root, extracted


def test_the_oracle_follows_pais_interval_rule(pai_root):
    _, ex = pai_root
    assert (ex["v25"]["interval"], ex["v25"]["fps_text"]) == (12, "2.0833333333333335")
    assert (ex["v2997"]["interval"], ex["v2997"]["fps_text"]) == (14, str(30000 / 1001 / 14))
    assert (ex["v30"]["interval"], ex["v30"]["fps_text"]) == (15, "2.0")
    assert ex["v25"]["kept"] == [0, 12, 24, 36, 48, 60, 72]
    names, sgt = pai_convert(ex["v25"]["folder"])
    assert [counter_of(p) for p in names] == [0, 12, 24, 36, 48, 60]  # the odd 7th is dropped
    assert sgt == 0.48


def test_the_pai_recipe_takes_every_frame_as_extracted(pai_root):
    root, ex = pai_root
    got = {s.record.id: s for s in StreamingDataset(pai_config(root, list(VIDEOS)))}
    assert sorted(got) == sorted(VIDEOS)
    for name, info in ex.items():
        names, sgt = pai_convert(info["folder"])
        clip = got[name].clips[0]
        assert clip.kind == "frames"                                   # the folder, not the video beside it
        assert clip.num_frames == len(names)                           # 6, 8, 4
        assert [read_counter(f) for f in clip.frames] == [counter_of(p) for p in names]
        assert got[name].model_record["second_per_grid_ts"] == [sgt]  # 1 / float(fps text), exactly Pai's
    assert [len(pai_convert(i["folder"])[0]) for i in ex.values()] == [6, 8, 4]


def test_resample_mode_samples_the_folder_again(pai_root):
    """What the recipe did before (issue 27.3): the 25 fps folder resampled to 2 fps."""
    root, ex = pai_root
    s = next(iter(StreamingDataset(pai_config(root, ["v25"], frame_folders="resample", frame_rule="ffmpeg_fps"))))
    assert s.model_record["second_per_grid_ts"] == [0.5]
    assert [read_counter(f) for f in s.clips[0].frames] != [counter_of(p) for p in pai_convert(ex["v25"]["folder"])[0]]


def test_shards_hold_what_pais_converter_stores(pai_root, tmp_path):
    root, ex = pai_root
    summary = run_cache(pai_config(root, ["v25", "v2997"]), str(tmp_path), workers=0, progress=False)
    assert summary["kept"] == 2
    with tarfile.open(tmp_path / "pretrain-000000.tar") as tar:
        parts = {n: tar.extractfile(n).read() for n in tar.getnames()}
    for i, name in enumerate(["v25", "v2997"]):
        names, sgt = pai_convert(ex[name]["folder"])
        videos = pickle.loads(parts[f"s-{i:08d}.videos"])
        counters = [read_counter(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in videos[0]]
        assert counters == [counter_of(p) for p in names]
        assert json.loads(parts[f"s-{i:08d}.json"])["second_per_grid_ts"] == [sgt]


def test_a_folder_without_fps_json_is_2_fps_and_a_bad_one_is_a_counted_drop(tmp_path):
    make_frame_folder(tmp_path / "nojson", num_frames=5, size=SIZE)
    make_frame_folder(tmp_path / "bad", num_frames=4, fps="fast", size=SIZE)
    cfg = pai_config(tmp_path, ["nojson", "bad"])
    items = list(StreamingDataset(cfg, emit_drops=True))
    kept = [i for i in items if isinstance(i, Sample)]
    assert [d.reason for d in items if isinstance(d, Drop)] == ["decode_error"]
    names, sgt = pai_convert(str(tmp_path / "nojson"))
    assert sgt == 0.5 and kept[0].model_record["second_per_grid_ts"] == [0.5]
    assert [read_counter(f) for f in kept[0].clips[0].frames] == [counter_of(p) for p in names] == [0, 1, 2, 3]


def test_frame_folders_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"sampling\.frame_folders"):
        load_config({"sources": [{"name": "s", "annotations": str(tmp_path / "a.json")}],
                     "sampling": {"frame_folders": "as_is"}})
    cfg = load_config("configs/qwen2vl_megatron.yaml")
    assert cfg.sampling.frame_folders == "as_extracted" and cfg.sampling.frame_folder_fps == 2.0
