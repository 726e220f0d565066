"""minicpmv / idefics3 output: wds shards webdataset reads, and the files layout's JSON list."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mmstream.sinks import run_cache, verify
from sink_samples import BLUE, RED, FakeDataset, cache_config, drop, image_sample, video_sample
from training_adapters.minicpmv import MiniCPMVShards, MiniCPMVStream

JPEG_TOLERANCE = 12


def items(fmt="minicpmv"):
    return [video_sample("src-00000000", 3, fmt=fmt), drop("src-00000001"),
            image_sample("src-00000002", channels=4, fmt=fmt), video_sample("src-00000003", 2, color=BLUE, fmt=fmt)]


def close(img, color) -> bool:
    return np.abs(np.asarray(img.convert("RGB")).astype(int) - np.array(color)).max() <= JPEG_TOLERANCE


@pytest.mark.parametrize("fmt", ["minicpmv", "idefics3"])
def test_webdataset_reads_the_wds_shards(tmp_path, fmt):
    run_cache(cache_config(fmt, maxcount=2), str(tmp_path), workers=0, progress=False,
              dataset_factory=FakeDataset.factory(items(fmt)))
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert [os.path.basename(s) for s in shards] == [f"{fmt}-000000.tar", f"{fmt}-000001.tar"]
    got = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False).decode("pil")}
    assert sorted(got) == ["src-00000000", "src-00000002", "src-00000003"]
    red = got["src-00000000"]
    assert red["json"] == items(fmt)[0].model_record  # the model record, unchanged
    assert sorted(k for k in red if k.endswith(".jpg")) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert all(close(red[k], RED) for k in ("00000.jpg", "00001.jpg", "00002.jpg"))
    assert close(got["src-00000002"]["00000.jpg"], BLUE)  # RGBA became RGB
    assert verify(str(tmp_path)).ok


def test_minicpmv_adapter_serves_supervised_dataset_items(tmp_path):
    run_cache(cache_config("minicpmv", maxcount=2), str(tmp_path), workers=0, progress=False,
              dataset_factory=FakeDataset.factory(items()))
    ds = MiniCPMVShards(str(tmp_path))
    assert len(ds) == 3
    item = ds[0]
    assert item["key"] == "src-00000000" and item["id"] == "src-00000000"
    assert list(item["images"]) == ["<image_00>", "<image_01>", "<image_02>"]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and close(im, RED) for im in item["images"].values())
    assert item["conversations"][0] == {"role": "user", "content": "<image_00>\n<image_01>\n<image_02>\nQuestion?"}
    # raw_data(): what finetune.py loads from --data_path; SupervisedDataset opens each value
    raw = ds.raw_data()
    assert len(raw) == 3
    rec = raw[2]
    images = {tag: Image.open(f).convert("RGB") for tag, f in rec["image"].items()}
    assert list(images) == ["<image_00>", "<image_01>"] and close(images["<image_01>"], BLUE)
    # the live stream, wrapped
    live = list(MiniCPMVStream(items()))
    assert [x["key"] for x in live] == ["src-00000000", "src-00000002", "src-00000003"]
    assert close(live[0]["images"]["<image_02>"], RED)


@pytest.mark.parametrize("paths", ["absolute", "relative"])
def test_files_layout_json_loads_and_every_path_exists(tmp_path, paths):
    out = tmp_path / "cache"
    cfg = cache_config("minicpmv", layout="files", maxcount=2, image_paths=paths)
    s = run_cache(cfg, str(out), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert s["finalized"] and s["kept"] == 3
    with open(out / "data.json", encoding="utf-8") as f:
        records = json.load(f)
    assert [r["id"] for r in records] == ["src-00000000", "src-00000002", "src-00000003"]
    first = records[0]
    assert set(first) == {"id", "image", "conversations"}
    assert list(first["image"]) == ["<image_00>", "<image_01>", "<image_02>"]
    assert first["conversations"] == items()[0].model_record["conversations"]
    for r in records:
        for p in r["image"].values():
            assert os.path.isabs(p) == (paths == "absolute")
            full = p if os.path.isabs(p) else os.path.join(out, p)
            assert os.path.isfile(full), p
    assert close(Image.open(first["image"]["<image_00>"] if paths == "absolute"
                            else out / first["image"]["<image_00>"]), RED)
    assert first["image"]["<image_01>"].endswith("images/src-00000000/00001.jpg")
    assert not list(out.glob("*.tmp-*")) and not list((out / "parts").glob("*.tmp-*"))
    assert verify(str(out)).ok


def test_files_layout_verify_notices_a_changed_frame(tmp_path):
    run_cache(cache_config("minicpmv", layout="files", maxcount=2), str(tmp_path), workers=0, progress=False,
              dataset_factory=FakeDataset.factory(items()))
    frame = tmp_path / "images" / "src-00000003" / "00001.jpg"
    data = bytearray(frame.read_bytes())
    data[-10] ^= 0xFF
    frame.write_bytes(bytes(data))
    report = verify(str(tmp_path))
    assert not report.ok and any("frame files differ" in p for p in report.problems)
    os.remove(frame)
    assert any("does not exist" in p or "cannot be read" in p for p in verify(str(tmp_path)).problems)
