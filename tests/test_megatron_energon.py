"""megatron shards: Pai's ChatML layout, energon's own prepare, and real energon loading."""
from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import yaml
from PIL import Image

from megatron.energon import WorkerConfig, get_loader, get_savable_loader, get_train_dataset
from megatron.energon.errors import reraise_exception

from mmstream.sinks import run_cache, verify
from mmstream.sinks.energon import prepare
from sink_samples import BLUE, RED, FakeDataset, cache_config, drop, image_sample, mixed_sample, video_sample
from training_adapters.megatron import ChatMLSample, ChatMLTaskEncoder

JPEG_TOLERANCE = 12  # a solid colour survives JPEG within a few levels


def load_all(path, batch_size=None, savable=False):
    """Every sample of the train split, through energon, errors raised (not skipped)."""
    wc = WorkerConfig(rank=0, world_size=1, num_workers=0, global_error_handler=reraise_exception)
    ds = get_train_dataset(str(path), worker_config=wc, batch_size=batch_size, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, task_encoder=ChatMLTaskEncoder(), repeat=False)
    return list((get_savable_loader if savable else get_loader)(ds))


def items():
    return [
        video_sample("src-00000000", 3, sgt=2.0),           # odd: stored with the last frame repeated
        image_sample("src-00000001", channels=4),            # RGBA image
        drop("src-00000002"),
        mixed_sample("src-00000003", sgt=0.5),
        video_sample("src-00000004", 6, color=BLUE, sgt=1.0),
    ]


@pytest.fixture(scope="module")
def megatron_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("megatron")
    # 8,1,1 over a single shard: energon's own ratio split would leave train empty
    cfg = cache_config("megatron", maxcount=100, split_ratio="8,1,1")
    summary = run_cache(cfg, str(out), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert summary["finalized"] and summary["kept"] == 4 and summary["shards"] == 1
    return out


def test_tar_members_follow_pai_chatml(megatron_dir):
    with tarfile.open(megatron_dir / "pretrain-000000.tar") as tar:
        names = tar.getnames()
        parts = {n: tar.extractfile(n).read() for n in names}
    keys = ["src-00000000", "src-00000001", "src-00000003", "src-00000004"]
    assert names == [f"{k}.{ext}" for k in keys for ext in ("jpgs", "videos", "json")]
    assert all("." not in k for k in keys)
    assert pickle.loads(parts["src-00000000.jpgs"]) == []          # always written, empty when none
    videos = pickle.loads(parts["src-00000000.videos"])
    assert [len(v) for v in videos] == [4]                           # 3 frames -> even
    assert pickle.loads(parts["src-00000001.videos"]) == []
    assert len(pickle.loads(parts["src-00000001.jpgs"])) == 1
    rec = json.loads(parts["src-00000003.json"])
    assert rec == {"conversations": [{"from": "human", "value": "<image>\n<video>\nQuestion?"},
                                     {"from": "gpt", "value": "Answer."}], "second_per_grid_ts": [0.5]}
    first = np.asarray(Image.open(io.BytesIO(videos[0][0])).convert("RGB")).astype(int)
    assert np.abs(first - np.array(RED)).max() <= JPEG_TOLERANCE   # RGB, not BGR


def test_energon_metadata_is_energons_own_and_train_is_not_empty(megatron_dir):
    meta = megatron_dir / ".nv-meta"
    for name in ("dataset.yaml", "split.yaml", ".info.json", "index.sqlite", "index.uuid"):
        assert (meta / name).is_file(), name
    assert yaml.safe_load((meta / "dataset.yaml").read_text()) == {"__module__": "megatron.energon",
                                                                   "__class__": "CrudeWebdataset"}
    split = yaml.safe_load((meta / "split.yaml").read_text())["split_parts"]
    assert split["train"] == ["pretrain-000000.tar"] and split["val"] == [] and split["test"] == []
    info = json.loads((meta / ".info.json").read_text())
    assert info["shard_counts"] == {"pretrain-000000.tar": 4}
    manifest = json.loads((megatron_dir / "manifest.json").read_text())
    assert manifest["trainer"]["kind"] == "energon" and manifest["trainer"]["command"][:2] == ["energon", "prepare"]
    assert verify(str(megatron_dir)).ok


def test_energon_loads_every_sample_with_the_adapter(megatron_dir):
    got = {s.__key__: s for s in load_all(megatron_dir)}
    assert sorted(got) == ["src-00000000", "src-00000001", "src-00000003", "src-00000004"]
    assert all(isinstance(s, ChatMLSample) for s in got.values())

    red = got["src-00000000"]
    assert len(red.videos) == 1 and red.images == []
    assert tuple(red.videos[0].shape) == (4, 3, 32, 48)             # [T, 3, H, W]
    pixels = red.videos[0].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(pixels - np.array(RED)).max() <= JPEG_TOLERANCE   # pure red stays red
    assert red.second_per_grid_ts == [2.0]
    assert red.conversation[0] == {"from": "human", "value": "<video>\nQuestion?"}

    rgba = got["src-00000001"]
    assert len(rgba.images) == 1 and rgba.videos == [] and rgba.second_per_grid_ts == []
    assert np.abs(rgba.images[0].permute(1, 2, 0).numpy().astype(int) - np.array(BLUE)).max() <= JPEG_TOLERANCE

    mixed = got["src-00000003"]
    assert [tuple(v.shape)[0] for v in mixed.videos] == [2] and len(mixed.images) == 1
    assert mixed.second_per_grid_ts == [0.5]
    assert got["src-00000004"].second_per_grid_ts == [1.0]
    for s in got.values():
        assert all(v.shape[0] % 2 == 0 for v in s.videos)


def test_savable_loader_batches(megatron_dir):
    batches = load_all(megatron_dir, batch_size=2, savable=True)
    keys = sorted(k for b in batches for k in b.__key__)
    assert keys == ["src-00000000", "src-00000001", "src-00000003", "src-00000004"]
    assert all(isinstance(b.videos, list) for b in batches)


def test_a_broken_sample_raises_instead_of_being_skipped(tmp_path):
    """With a re-raising error handler, a sample that breaks the format stops loading."""
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(jpeg, format="JPEG")
    with tarfile.open(tmp_path / "pretrain-000000.tar", "w") as tar:
        add(tar, "bad.jpgs", pickle.dumps([]))
        add(tar, "bad.videos", pickle.dumps([[jpeg.getvalue()] * 3]))  # odd frame count
        add(tar, "bad.json", json.dumps({"conversations": [], "second_per_grid_ts": [1.0]}).encode())
    prepare(str(tmp_path), ["pretrain-000000.tar"])
    with pytest.raises(Exception, match="must be even"):
        load_all(tmp_path)
