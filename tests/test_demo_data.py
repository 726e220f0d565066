"""The bundled demo dataset builds, its files exist and its annotations parse."""
from __future__ import annotations

import json
import os
import re

import av
import numpy as np
import pytest
import yaml
from PIL import Image

from mmstream.config import load_config
from mmstream.demo import build_demo_data, main
from mmstream.synth import read_counter

VIDEO_EXTS = ("mp4", "mkv", "webm", "avi")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_data(out)


def _first_frame(path):
    with av.open(path) as c:
        stream = c.streams.video[0]
        frame = next(c.decode(stream))
        duration = float(c.duration / av.time_base) if c.duration else None
        return frame.to_ndarray(format="rgb24"), duration


def test_config_has_the_documented_keys(demo):
    out, config_path = demo
    assert config_path == os.path.join(str(out), "demo.yaml")
    with open(config_path) as f:
        raw = yaml.safe_load(f)
    assert [s["format"] for s in raw["sources"]] == ["videochatgpt", "llava", "sharegpt", "t2vid_raw"]
    assert raw["model"]["name"] == "minicpmv-2.5" and raw["output"]["format"] == "minicpmv"
    assert raw["sampling"] == {"fps": 1.0, "max_frames": 24, "strategy": "t2vid", "decoder": "auto"}
    assert raw["loader"] == {"seed": 0, "mix_buffer": 32, "mix_buffer_mb": 512} and raw["strict"] is False
    assert all(not os.path.isabs(s["annotations"]) for s in raw["sources"])
    cfg = load_config(config_path)
    for src in cfg.sources:
        assert os.path.isfile(src.annotations) and os.path.isdir(src.media_root)


def test_videochatgpt_entries(demo):
    out, _ = demo
    with open(out / "annotations" / "VideoInstruct100K.json") as f:
        records = json.load(f)
    assert isinstance(records, list) and all(set(r) == {"video_id", "q", "a"} for r in records)
    missing = []
    for r in records:
        assert "." not in r["video_id"]
        found = [e for e in VIDEO_EXTS if os.path.isfile(out / "videos" / f"{r['video_id']}.{e}")]
        if not found:
            missing.append(r["video_id"])
            continue
        frame, duration = _first_frame(str(out / "videos" / f"{r['video_id']}.{found[0]}"))
        assert frame.mean() > 10 and 2.5 <= duration <= 6.5  # real footage, a few seconds
    assert missing == ["v_missing_clip"]
    assert {e for r in records for e in VIDEO_EXTS if os.path.isfile(out / "videos" / f"{r['video_id']}.{e}")} \
        == {"mp4", "webm", "mkv"}  # the extension has to be probed


def test_llava_jsonl(demo):
    out, _ = demo
    good, bad = [], 0
    with open(out / "annotations" / "video_llava.jsonl") as f:
        for line in f:
            try:
                good.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    assert bad == 1 and len(good) == 4
    for r in good:
        assert os.path.isfile(out / "videos" / r["video"])
        assert r["conversations"][0]["from"] == "human"
        assert r["conversations"][0]["value"].startswith(("<video>\n", "<image>\n"))
    counters = {r["video"] for r in good if r["video"].startswith("counter_")}
    assert counters == {"counter_2997.mp4", "counter_bframes.mp4", "counter_hevc_gop250.mp4"}
    with av.open(str(out / "videos" / "counter_2997.mp4")) as c:
        assert str(c.streams.video[0].average_rate) == "30000/1001"
    with av.open(str(out / "videos" / "counter_hevc_gop250.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "hevc"
        assert [read_counter(f.to_ndarray(format="rgb24")) for _, f in zip(range(3), c.decode(video=0))] \
            == [0, 1, 2]


def test_sharegpt_media_lists(demo):
    out, _ = demo
    with open(out / "annotations" / "sharegpt_mm.json") as f:
        records = json.load(f)
    mismatched = 0
    for r in records:
        text = "".join(t["value"] for t in r["conversations"] if t["from"] == "human")
        n_img, n_vid = len(re.findall("<image>", text)), len(re.findall("<video>", text))
        if (n_img, n_vid) != (len(r.get("images", [])), len(r.get("videos", []))):
            mismatched += 1
        for p in r.get("images", []):
            assert Image.open(out / p).size[0] > 0
        for p in r.get("videos", []):
            stem = os.path.splitext(p)[0]
            assert os.path.isfile(out / p) or os.path.isdir(out / stem)
    assert mismatched == 1
    assert any(r.get("images") and r.get("videos") for r in records)


def test_frame_folder_and_sidecar(demo):
    out, _ = demo
    folder = out / "frames" / "counter_frames"
    names = sorted(os.listdir(folder))
    assert len(names) == 20 and names[0] == "00001.jpg"
    with open(out / "frames" / "counter_frames.json") as f:
        assert json.load(f) == {"fps": "2.0"}
    assert read_counter(np.asarray(Image.open(folder / names[-1]).convert("RGB"))) == 19


def test_manifest_lists_the_drops_the_stream_really_makes(demo):
    from collections import Counter

    from mmstream import StreamingDataset
    from mmstream.types import Drop

    out, config_path = demo
    with open(out / "demo_manifest.json") as f:
        manifest = json.load(f)
    seen: dict = {}
    kept = 0
    for item in StreamingDataset(config_path, emit_drops=True):
        if isinstance(item, Drop):
            seen.setdefault(item.source, Counter())[item.reason] += 1
        else:
            kept += 1
    assert {k: dict(v) for k, v in seen.items()} == manifest["expected_drops"]
    assert kept + sum(sum(v.values()) for v in seen.values()) == sum(manifest["records"].values())
    assert set(manifest["expected_drops"]) == {"videochatgpt", "llava", "sharegpt", "synthetic"}


def _mtimes(root):
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns for d, _, fs in os.walk(root) for n in fs}


def test_rebuild_reuses_files(demo, capsys):
    out, config_path = demo
    before = _mtimes(out)
    assert main([str(out)]) == 0
    assert capsys.readouterr().out.strip() == config_path
    after = _mtimes(out)
    assert after == before
