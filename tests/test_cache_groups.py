"""`mmstream cache` with QA data: each video decoded (and JPEG-encoded) once, the files
layout writes one frame set per group that every record of the group names."""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from backends import LOG_ENV, decode_log
from conftest import write_jsonl
from mmstream.sinks import run_cache, verify
from mmstream.synth import encode_counter_video, read_counter

PER_VIDEO = {"a": 3, "b": 1, "c": 4}


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    root = tmp_path_factory.mktemp("cacheqa")
    for v in PER_VIDEO:
        encode_counter_video(root / f"{v}.mp4", num_frames=16, fps="8", size=(96, 72))
    recs = []
    for v, k in PER_VIDEO.items():
        recs += [{"id": f"{v}{q}", "video": f"{v}.mp4",
                  "conversations": [{"from": "human", "value": f"<video>\nQ{q} on {v}?"},
                                    {"from": "gpt", "value": f"A{q}"}]} for q in range(k)]
    order = [4, 0, 7, 2, 5, 1, 6, 3]  # scattered: no two records of a video side by side
    return root, write_jsonl(root / "qa.jsonl", [recs[i] for i in order])


@pytest.fixture
def decodes(tmp_path, monkeypatch):
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    return lambda: decode_log(log)


def cfg(ann, **output):
    return {"sources": [{"name": "qa", "format": "llava", "annotations": ann}],
            "sampling": {"fps": 2, "max_frames": 4, "decoder": "backends:CountingBackend"},
            "model": {"name": "minicpmv-2.5"},
            "output": {"format": "minicpmv", "maxcount": 3, **output}}


@pytest.mark.parametrize("workers", [0, 2])
def test_files_layout_writes_each_videos_frames_once(qa, decodes, tmp_path, workers):
    root, ann = qa
    out = tmp_path / "out"
    s = run_cache(cfg(ann, layout="files"), str(out), workers=workers, progress=False)
    assert s["kept"] == sum(PER_VIDEO.values()) and s["finalized"]
    assert len(decodes()) == len(PER_VIDEO)
    records = json.loads((out / "data.json").read_text())
    folders = {}
    for r in records:
        paths = list(r["image"].values())
        assert len(paths) == 4
        folders.setdefault(os.path.dirname(paths[0]), set()).add(r["conversations"][0]["content"].split("\n")[-1])
    assert len(folders) == len(PER_VIDEO)  # one frame folder per video, shared by its records
    assert sorted(len(v) for v in folders.values()) == sorted(PER_VIDEO.values())
    frame_files = [f for d in os.listdir(out / "images") for f in os.listdir(out / "images" / d)]
    assert len(frame_files) == 4 * len(PER_VIDEO)
    for folder in folders:
        got = [read_counter(np.asarray(Image.open(os.path.join(folder, f"{n:05d}.jpg")))) for n in range(4)]
        assert got == [1, 5, 9, 13]  # 2 fps of 8 fps: the last frame before (k + 1/2) / 2 s
    assert verify(str(out)).ok


def test_wds_and_megatron_hold_every_samples_frames_encoded_once(qa, decodes, tmp_path):
    root, ann = qa
    out = tmp_path / "wds"
    run_cache(cfg(ann), str(out), workers=0, progress=False)
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                members[m.name] = tar.extractfile(m).read()
    jpgs = [n for n in members if n.endswith(".jpg")]
    assert len(jpgs) == 4 * sum(PER_VIDEO.values())  # every sample holds its own frames
    assert len(decodes()) == len(PER_VIDEO)
    by_video = {}
    for n in jpgs:
        key = n.split(".")[0]
        rec = json.loads(members[key + ".json"])
        by_video.setdefault(rec["conversations"][0]["content"].split(" on ")[-1], set()).add(members[n])
    assert all(len(v) == 4 for v in by_video.values())  # one encoding per frame, the same bytes in each sample

    meg = tmp_path / "meg"
    mcfg = cfg(ann, format="megatron")
    mcfg["model"] = {"name": "qwen2-vl"}
    run_cache(mcfg, str(meg), workers=2, progress=False)
    videos = []
    for shard in sorted(meg.glob("*.tar")):
        with tarfile.open(shard) as tar:
            videos += [pickle.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".videos")]
    assert len(videos) == sum(PER_VIDEO.values()) and all(len(v) == 1 and len(v[0]) == 4 for v in videos)
    frames = [read_counter(np.asarray(Image.open(io.BytesIO(j)))) for j in videos[0][0]]
    assert frames == [1, 5, 9, 13]
    assert len(decodes()) == 2 * len(PER_VIDEO)
    assert verify(str(meg)).ok


def test_resumed_files_run_keeps_shared_frames_valid(qa, tmp_path):
    """A run stopped after its first part, then resumed: records of a half-cached group
    still name valid frames, and verify checks every frame a part names."""
    root, ann = qa
    out = tmp_path / "out"
    config = cfg(ann, layout="files", maxcount=2)

    class StopAfter:
        def __init__(self, dataset, n):
            self.dataset, self.n = dataset, n

        def __iter__(self):
            for i, item in enumerate(self.dataset):
                if i == self.n:
                    raise KeyboardInterrupt
                yield item

    from mmstream import StreamingDataset

    with pytest.raises(KeyboardInterrupt):
        run_cache(config, str(out), workers=0, progress=False,
                  dataset_factory=lambda c, **kw: StopAfter(StreamingDataset(c, **kw), 3))
    s = run_cache(config, str(out), workers=0, progress=False)
    assert s["kept"] == sum(PER_VIDEO.values()) and s["resumed"]
    report = verify(str(out))
    assert report.ok, str(report)
    records = json.loads((out / "data.json").read_text())
    assert len({r["id"] for r in records}) == sum(PER_VIDEO.values())
    # damage one shared frame: every part that names it fails verification
    shared = list(records[0]["image"].values())[0]
    with open(shared, "ab") as f:
        f.write(b"x")
    bad = verify(str(out))
    assert not bad.ok and any("frame files differ" in p for p in bad.problems)


def test_files_layout_png_frames_are_exactly_the_sampled_frames(qa, tmp_path):
    from mmstream import StreamingDataset

    root, ann = qa
    config = cfg(ann, layout="files", options={"image_format": "png"})
    out = tmp_path / "png"
    run_cache(config, str(out), workers=0, progress=False)
    records = {r["id"]: r for r in json.loads((out / "data.json").read_text())}
    for sample in StreamingDataset(config):
        paths = list(records[sample.record.id]["image"].values())
        assert all(p.endswith(".png") for p in paths)
        stored = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        assert np.array_equal(stored, sample.clips[0].frames)  # lossless: bit for bit
    assert verify(str(out)).ok


def test_png_is_refused_where_readers_expect_jpeg(qa, tmp_path):
    from mmstream.errors import ConfigError

    root, ann = qa
    with pytest.raises(ConfigError, match="image_format"):
        run_cache(cfg(ann, options={"image_format": "png"}), str(tmp_path / "x"), workers=0, progress=False)
    with pytest.raises(ConfigError, match="image_format"):
        run_cache(cfg(ann, layout="files", options={"image_format": "gif"}), str(tmp_path / "y"), workers=0,
                  progress=False)
