"""webdataset as the shard layer (issue 26): shards written by its TarWriter, a cache opened
with plain ``wds.WebDataset`` and ``wids.ShardListDataset`` giving the adapter's samples,
locally and from moto's S3 server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import webdataset as wds
import wids
from PIL import Image

from mmstream.errors import MmstreamError
from mmstream.sinks import ShardWriter, finalize, run_cache, verify
from mmstream.sinks.formats import Encoded
from mmstream.sinks.remote import verify_url
from servers import s3_server
from sink_samples import BLUE, FakeDataset, cache_config, drop, image_sample, video_sample
from training_adapters.minicpmv import MiniCPMVShards, MiniCPMVShardStream

BUCKET = "shards"
SECRET = "wds-layer-secret"

pytestmark = pytest.mark.filterwarnings("ignore:String specifications for transformations")  # wids' default decoder


def items(n=7):
    out = []
    for i in range(n):
        key = f"src-{i:08d}"
        if i == 3:
            out.append(drop(key))
        elif i % 2:
            out.append(image_sample(key, color=BLUE, fmt="minicpmv"))
        else:
            out.append(video_sample(key, 2 + i % 3, fmt="minicpmv"))
    return out


def manifest_keys(out) -> list[str]:
    m = json.loads((out / "manifest.json").read_text())
    return [k for s in m["shards"] for k in s["keys"]]


def adapter_view(ds) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """``{key: (record, {tag: jpeg bytes})}`` of every sample of a MiniCPMVShards."""
    return {ds.sample(i)["__key__"]: (ds.record(i), ds.frames(i)) for i in range(len(ds))}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    s = run_cache(cache_config("minicpmv", maxcount=2), str(out), workers=0, progress=False,
                  dataset_factory=FakeDataset.factory(items()))
    assert s["finalized"] and s["kept"] == 6 and s["shards"] == 3
    return out


def test_tar_writer_gives_the_bytes_of_the_previous_writer(tmp_path):
    """The move to webdataset's TarWriter changed no byte: a cache written before verifies as it is."""
    members = [("jpgs", b"\x00" * 700), ("videos", os.urandom(1500)), ("json", b'{"a": 1}')]
    with ShardWriter(str(tmp_path), lambda i: f"s-{i}.tar", maxcount=10) as w:
        for i in range(3):
            w.write(Encoded(key=f"k-{i}", members=members))
    old = io.BytesIO()  # what mmstream's own tarfile writer wrote before (PAX, mtime 0, 0644, root, no names)
    with tarfile.open(fileobj=old, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            for ext, data in members:
                info = tarfile.TarInfo(f"k-{i}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                    len(data), 0, 0o644, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(data))
    new = (tmp_path / "s-0.tar").read_bytes()
    assert new == old.getvalue()
    assert w.committed[0].sha256 == hashlib.sha256(new).hexdigest()


def test_a_member_name_wids_cannot_read_whole_is_refused(tmp_path):
    with pytest.raises(MmstreamError, match="at most 100"):
        with ShardWriter(str(tmp_path), lambda i: f"s-{i}.tar", maxcount=10) as w:
            w.write(Encoded(key="k" * 100, members=[("json", b"{}")]))
    assert os.listdir(tmp_path) == []


def test_the_wids_descriptor_lists_every_shard_relative(cache):
    m = json.loads((cache / "manifest.json").read_text())
    desc = json.loads((cache / "wids.json").read_text())
    assert desc["wids_version"] == 1
    assert desc["shardlist"] == [{"url": s["name"], "nsamples": s["count"], "filesize": s["bytes"],
                                  "sha256": s["sha256"]} for s in m["shards"]]
    assert m["trainer"]["wids"] == "wids.json"


def test_plain_webdataset_and_wids_give_the_adapters_samples(cache):
    ds = MiniCPMVShards(str(cache))
    want = adapter_view(ds)
    assert list(want) == manifest_keys(cache)

    m = json.loads((cache / "manifest.json").read_text())
    urls = [str(cache / s["name"]) for s in m["shards"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        seen.append(key)
        record, frames = want[key]
        assert json.loads(sample["json"]) == record
        assert {tag: sample[os.path.basename(p)] for tag, p in record["image"].items()} == frames
    assert seen == manifest_keys(cache)  # every manifest key once, in order

    plain = wids.ShardListDataset(str(cache / "wids.json"), cache_dir=str(cache.parent / "wids-cache"))
    assert len(plain) == len(ds) == 6
    keys = []
    for i in range(len(plain)):
        sample = plain[i]  # wids' default decoding: .json -> dict, .jpg -> PIL
        keys.append(sample["__key__"])
        record, frames = want[sample["__key__"]]
        assert sample[".json"] == record  # every sample with its record
        for tag, p in record["image"].items():
            assert np.array_equal(np.asarray(sample["." + os.path.basename(p)]),
                                  np.asarray(Image.open(io.BytesIO(frames[tag]))))
    assert keys == manifest_keys(cache)
    raw = wids.ShardListDataset(str(cache / "wids.json"), cache_dir=str(cache.parent / "wids-cache"),
                                transformations=[])
    assert {tag: raw[4]["." + os.path.basename(p)].read() for tag, p in want[keys[4]][0]["image"].items()} \
        == want[keys[4]][1]

    streamed = {item["key"]: item for item in MiniCPMVShardStream(str(cache))}
    assert list(streamed) == manifest_keys(cache)
    item = ds[1]
    assert streamed[item["key"]]["conversations"] == item["conversations"]
    assert list(streamed[item["key"]]["images"]) == list(item["images"])


def test_the_adapter_reads_a_read_only_cache_without_writing_beside_it(cache, tmp_path):
    ro = tmp_path / "ro"
    shutil.copytree(cache, ro, ignore=shutil.ignore_patterns(".mmstream"))
    before = sorted(os.listdir(ro))
    os.chmod(ro, 0o555)  # (root writes into it anyway: the next assertion is the one that holds for root)
    try:
        ds = MiniCPMVShards(str(ro))
        assert [ds.sample(i)["__key__"] for i in range(len(ds))] == manifest_keys(cache)
        # wids writes a lock file beside the local name it is given: never the cache folder
        assert all(not os.path.dirname(ds._checked()(url)).startswith(str(ro)) for url in ds.paths)
    finally:
        os.chmod(ro, 0o755)
    assert sorted(os.listdir(ro)) == before


def test_dataloader_workers_each_open_their_own_shards(cache):
    import torch.utils.data

    ds = MiniCPMVShards(str(cache))
    first = ds[0]["key"]  # opened in this process before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    assert sorted(item["key"] for item in loader) == sorted(manifest_keys(cache))
    assert ds[0]["key"] == first and ds[5]["key"] == manifest_keys(cache)[5]  # the parent's links are intact


def test_a_list_of_tars_is_counted_from_its_headers(cache):
    tars = sorted(str(p) for p in cache.glob("*.tar"))
    ds = MiniCPMVShards(tars)
    assert len(ds) == 6 and [ds.sample(i)["__key__"] for i in range(6)] == manifest_keys(cache)
    assert ds.record(5) == MiniCPMVShards(str(cache)).record(5)


def test_two_ranks_finalize_writes_the_wids_descriptor(tmp_path):
    out = tmp_path / "two"
    for rank in (0, 1):
        run_cache(cache_config("minicpmv", maxcount=2), str(out), workers=0, progress=False, rank=rank,
                  world_size=2, finalize=False, dataset_factory=FakeDataset.factory(items()))
    assert not (out / "wids.json").exists()
    finalize(str(out))
    plain = wids.ShardListDataset(str(out / "wids.json"), cache_dir=str(tmp_path / "wids-cache"))
    assert sorted(plain[i]["__key__"] for i in range(len(plain))) == sorted(manifest_keys(out))
    assert verify(str(out)).ok
    desc = json.loads((out / "wids.json").read_text())
    desc["shardlist"][0]["nsamples"] += 1
    (out / "wids.json").write_text(json.dumps(desc))
    report = verify(str(out))
    assert any("wids.json" in p for p in report.problems), str(report)


# -- the same from a bucket (moto's S3 server) ------------------------------------------

@pytest.fixture(scope="module")
def bucket(cache, tmp_path_factory):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=SECRET,
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": SECRET}
        cfg = cache_config("minicpmv", maxcount=2, storage_options=options,
                           staging_dir=str(tmp_path_factory.mktemp("staging")))
        s = run_cache(cfg, f"s3://{BUCKET}/cache", workers=0, progress=False,
                      dataset_factory=FakeDataset.factory(items()))
        assert s["finalized"] and s["kept"] == 6
        yield f"s3://{BUCKET}/cache", options


def test_the_adapter_reads_the_bucket_like_the_folder(cache, bucket, tmp_path):
    url, options = bucket
    from mmstream.config import StorageConfig

    assert verify_url(url, StorageConfig(options=options)).ok
    ds = MiniCPMVShards(url, storage_options=options, cache_dir=str(tmp_path / "copies"))
    assert adapter_view(ds) == adapter_view(MiniCPMVShards(str(cache)))
    streamed = [item["key"] for item in MiniCPMVShardStream(url, storage_options=options)]
    assert streamed == manifest_keys(cache)


@pytest.mark.skipif(shutil.which("aws") is None, reason="plain wids and webdataset reach s3:// through the aws CLI")
def test_plain_wids_and_webdataset_read_the_bucket(cache, bucket, tmp_path, monkeypatch):
    url, options = bucket
    # what the aws CLI that wids and `pipe:` call reads: the moto endpoint and its keys
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    want = adapter_view(MiniCPMVShards(str(cache)))
    plain = wids.ShardListDataset(f"{url}/wids.json", cache_dir=str(tmp_path / "wids-cache"))
    got = {}
    for i in range(len(plain)):
        sample = plain[i]
        got[sample["__key__"]] = sample[".json"]
    assert got == {k: rec for k, (rec, _) in want.items()}
    m = json.loads((cache / "manifest.json").read_text())
    urls = [f"pipe:aws s3 cp --quiet {url}/{s['name']} -" for s in m["shards"]]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert keys == manifest_keys(cache)
