"""A resumed cache never keeps bytes that differ from the manifest (issue 22, item 2):
one byte changed in a completed shard (tar, files-layout frame, object in a bucket), the
rerun redoes that shard, says so, and the cache verifies."""
from __future__ import annotations

import json
import logging
import os

import pytest

from mmstream.sinks import run_cache, verify
from mmstream.sinks.manifest import check_shards
from mmstream.sinks.remote import verify_url
from servers import s3_server
from sink_samples import FakeDataset, cache_config, drop, video_sample

BUCKET = "resume"
SECRET = "resume-secret"


def items(fmt="minicpmv", n=7):
    return [drop(f"src-{i:08d}") if i == 3 else video_sample(f"src-{i:08d}", 2, fmt=fmt) for i in range(n)]


def flip(path, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))


def kept_keys(manifest: dict) -> list[str]:
    return [k for s in manifest["shards"] for k in s["keys"]]


@pytest.mark.parametrize("fmt", ["minicpmv", "megatron"])
def test_a_changed_byte_in_a_completed_shard_is_redone(tmp_path, fmt, caplog):
    cfg = cache_config(fmt, maxcount=2)
    first = run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items(fmt)))
    assert first["shards_redone"] == 0 and first["shards"] == 3
    before = json.loads((tmp_path / "manifest.json").read_text())
    bad = before["shards"][1]
    flip(tmp_path / bad["name"], 700)  # inside a member's payload: still a valid tar of the same size
    assert not verify(str(tmp_path)).ok
    with caplog.at_level(logging.WARNING, logger="mmstream.sinks.cache"):
        s = run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items(fmt)))
    assert s["shards_redone"] == 1 and s["resumed"] and s["finalized"]
    assert s["kept"] == 6 and s["kept_this_run"] == bad["count"]
    others = [sh for sh in before["shards"] if sh is not bad]  # the drop recorded with the bad shard is redone too
    assert FakeDataset.calls[-1]["skip_keys"] == {k for sh in others for k in sh["keys"]} | {
        d["key"] for sh in others for d in sh["dropped"]}
    assert any(bad["name"] in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    after = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(kept_keys(after)) == sorted(kept_keys(before)) and len(set(kept_keys(after))) == 6
    assert bad["name"] not in {s["name"] for s in after["shards"]} and not (tmp_path / bad["name"]).exists()
    assert after["counts"]["dropped"] == {"decode_error": 1}
    report = verify(str(tmp_path))
    assert report.ok, str(report)
    from mmstream.cli.cache import format_summary

    assert "redone: 1 completed shard(s)" in format_summary(s)


def test_a_changed_frame_file_redoes_its_part(tmp_path):
    cfg = cache_config("minicpmv", layout="files", maxcount=2)
    run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    before = json.loads((tmp_path / "manifest.json").read_text())
    part = json.loads((tmp_path / before["shards"][0]["name"]).read_text())
    frame = tmp_path / part[1]["image"]["<image_01>"]
    flip(frame, os.path.getsize(frame) // 2)
    assert check_shards(str(tmp_path), before["shards"])[0] is not None
    s = run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert s["shards_redone"] == 1 and s["kept"] == 6 and s["kept_this_run"] == 2
    report = verify(str(tmp_path))
    assert report.ok, str(report)
    assert json.loads((tmp_path / "data.json").read_text()).__len__() == 6


def test_unchanged_shards_are_kept_without_redoing_anything(tmp_path):
    cfg = cache_config("minicpmv", maxcount=2)
    run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()),
              finalize=False)
    m = json.loads((tmp_path / "manifest.rank-0.json").read_text())
    m["complete"] = False  # as if killed after its last shard
    (tmp_path / "manifest.rank-0.json").write_text(json.dumps(m))
    s = run_cache(cfg, str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert s["shards_redone"] == 0 and s["kept_this_run"] == 0 and s["kept"] == 6


@pytest.fixture
def s3(tmp_path):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=SECRET,
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "key": "testing", "secret": SECRET}


def test_a_changed_object_in_the_bucket_is_redone(s3, tmp_path):
    import s3fs

    from mmstream.config import StorageConfig

    staging = tmp_path / "staging"
    cfg = cache_config("minicpmv", maxcount=2, storage_options=s3, staging_dir=str(staging))
    url = f"s3://{BUCKET}/cache"
    run_cache(cfg, url, workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint_url"], key=s3["key"], secret=s3["secret"])
    manifest = json.loads(fs.cat_file(f"{BUCKET}/cache/manifest.json"))
    assert all(s.get("etag") for s in manifest["shards"])  # recorded at upload

    def corrupt(name: str) -> None:
        data = bytearray(fs.cat_file(f"{BUCKET}/cache/{name}"))
        data[700] ^= 0x01
        fs.pipe_file(f"{BUCKET}/cache/{name}", bytes(data))

    # 1. the same machine: its mirror still holds the good bytes, the bucket does not
    bad = manifest["shards"][1]["name"]
    corrupt(bad)
    assert not verify_url(url, StorageConfig(options=s3)).ok
    s = run_cache(cfg, url, workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert s["shards_redone"] == 1 and s["kept"] == 6 and s["kept_this_run"] == 2
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/cache/{bad}")  # deleted from the bucket too
    report = verify_url(url, StorageConfig(options=s3))
    assert report.ok, str(report)

    # 2. another machine: no mirror, only the bucket
    manifest = json.loads(fs.cat_file(f"{BUCKET}/cache/manifest.json"))
    bad = manifest["shards"][0]["name"]
    corrupt(bad)
    for root, dirs, files in os.walk(staging, topdown=False):
        for n in files:
            os.remove(os.path.join(root, n))
    s = run_cache(cfg, url, workers=0, progress=False, dataset_factory=FakeDataset.factory(items()))
    assert s["shards_redone"] == 1 and s["kept"] == 6
    report = verify_url(url, StorageConfig(options=s3))
    assert report.ok, str(report)
    fs.invalidate_cache()
    final = json.loads(fs.cat_file(f"{BUCKET}/cache/manifest.json"))
    assert sorted(kept_keys(final)) == [f"src-{i:08d}" for i in range(7) if i != 3]
