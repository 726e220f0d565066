"""Videos and annotations in object storage: moto's S3 server and an HTTP server with Range
requests, both started here on 127.0.0.1. The same config over local paths, s3:// and
http:// gives the same samples; faults end as counted reasons; secrets never show."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_jsonl
from mmstream import StreamingDataset, timing
from mmstream.sinks import run_cache
from mmstream.sinks.remote import verify_url
from mmstream.synth import encode_counter_video
from mmstream.types import Drop, Sample
from servers import http_server, s3_server

SECRET = "not-a-real-secret-0123456789"
BUCKET = "mmstream-test"
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    for i, (n, gop) in enumerate([(40, 10), (60, 50), (300, 300)]):
        encode_counter_video(root / f"v{i}.mp4", num_frames=n, fps="10", size=(128, 96), gop=gop)
    encode_counter_video(root / "v3.mp4", num_frames=1500, fps="10", size=(320, 240), gop=25)  # sparse reads
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "img.png")
    recs = [{"id": f"r{i}", "video": f"v{i}.mp4", "conversations": [
        {"from": "human", "value": f"<video>\nQ{i}?"}, {"from": "gpt", "value": "A"}]} for i in range(3)]
    recs.append({"id": "pic", "image": "img.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]})
    recs.append({"id": "gone", "video": "gone.mp4", "conversations": [
        {"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A"}]})
    write_jsonl(root / "ann.jsonl", recs)
    return root


@pytest.fixture(scope="module")
def s3(media):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key=SECRET, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for name in os.listdir(media):
            client.upload_file(str(media / name), BUCKET, f"data/{name}")
        yield {"endpoint_url": endpoint, "key": "testing", "secret": SECRET}


def config(annotations, media_root, options=None, **sampling):
    return {"sources": [{"name": "s", "format": "llava", "annotations": annotations, "media_root": media_root,
                         "storage_options": options or {}}],
            "sampling": {"fps": 2, "max_frames": 6, "decode_timeout": 20, **sampling},
            "loader": {"shuffle": False}}


def by_key(items):
    return {i.key: i for i in items}


def same_samples(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], Drop):
            assert isinstance(b[k], Drop) and a[k].reason == b[k].reason
            continue
        assert a[k].record.turns == b[k].record.turns
        for ca, cb in zip(a[k].clips, b[k].clips):
            assert np.array_equal(ca.frames, cb.frames) and list(ca.timestamps) == list(cb.timestamps)


def test_s3_and_http_give_the_local_samples(media, s3, caplog):
    local = by_key(StreamingDataset(config(str(media / "ann.jsonl"), str(media)), emit_drops=True))
    assert sum(isinstance(i, Sample) for i in local.values()) == 4
    caplog.set_level(logging.DEBUG)
    remote = by_key(StreamingDataset(config(f"s3://{BUCKET}/data/ann.jsonl", f"s3://{BUCKET}/data", s3),
                                     emit_drops=True))
    same_samples(local, remote)
    assert remote["s-00000004"].reason == "missing_media"
    with http_server(str(media)) as base:
        http = by_key(StreamingDataset(config(f"{base}/ann.jsonl", base), emit_drops=True))
    same_samples(local, http)
    assert SECRET not in caplog.text and all(SECRET not in str(d) for d in remote.values())


def test_workers_read_the_bucket_too(media, s3):
    from torch.utils.data import DataLoader

    from mmstream.cli.common import identity

    ds = StreamingDataset(config(f"s3://{BUCKET}/data/ann.jsonl", f"s3://{BUCKET}/data", s3), emit_drops=True)
    items = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=identity))
    assert sorted(i.key for i in items if isinstance(i, Sample)) == [f"s-0000000{i}" for i in range(4)]


def test_sparse_sampling_reads_a_fraction_of_the_object(media):
    timing.enable()
    timing.reset()
    try:
        write_jsonl(media / "one.jsonl", [{"id": "long", "video": "v3.mp4", "conversations": [
            {"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]}])
        with http_server(str(media)) as base:
            cfg = config(f"{base}/one.jsonl", base, max_frames=3, strategy="uniform")
            cfg["sampling"]["storage"] = {"read_ahead_mb": 0.005}
            s = next(iter(StreamingDataset(cfg)))
        counts = timing.snapshot()["counts"]
    finally:
        timing.enable(False)
    assert s.clips[0].num_frames == 3
    size = os.path.getsize(media / "v3.mp4")
    assert counts["object_bytes"] == 2 * size  # opened twice: probe, decode
    assert 0 < counts["bytes_read"] < 0.4 * size, counts  # the index and three key-frame intervals, not the file


def test_read_ahead_grows_on_sequential_reads_and_resets_on_a_seek():
    from mmstream.storage import MAX_RUN_BLOCKS, _run_cache_class

    data = os.urandom(3_000_000)
    asked = []

    def fetch(start, end):
        asked.append((start, end))
        return data[start:end]

    bs = 1 << 14
    cache = _run_cache_class()(bs, fetch, len(data))
    pos = 0
    while pos < 40 * bs:  # sequential, as a decoder reads a GOP
        assert cache._fetch(pos, pos + 4096) == data[pos:pos + 4096]
        pos += 4096
    assert MAX_RUN_BLOCKS == 16
    assert [(e - s) // bs for s, e in asked] == [1, 2, 4, 8, 16, 16]  # 40 blocks read: 47 fetched
    assert all(asked[i][1] == asked[i + 1][0] for i in range(len(asked) - 1))  # nothing fetched twice
    asked.clear()
    far = 150 * bs + 100  # a seek: one block, then growing again
    assert cache._fetch(far, far + 10) == data[far:far + 10]
    assert asked == [(150 * bs, 151 * bs)]
    assert cache._fetch(0, 4096) == data[:4096]  # still kept: no request
    assert len(asked) == 1
    assert cache._fetch(len(data) - 5, len(data) + 100) == data[-5:]
    assert cache._fetch(None, None) == data


def test_a_sequential_remote_read_takes_few_requests_and_one_lookup(media):
    from servers import RangeHandler

    from mmstream import storage
    from mmstream.config import StorageConfig

    size = os.path.getsize(media / "v3.mp4")
    with http_server(str(media)) as base, storage.using(StorageConfig(read_ahead_mb=0.01)):
        url = f"{base}/v3.mp4"
        RangeHandler.requests_seen.clear()
        assert storage.kind_of(url) == "file"
        with storage.open_media(url) as f:  # as the probe reads the index, then the decoder the frames
            got = b"".join(iter(lambda: f.read(32768), b""))
        first = list(RangeHandler.requests_seen)
        with storage.open_media(url) as f:  # the next open starts with the blocks this process has
            tail = f.size - 300_000
            f.seek(tail)
            assert f.read() == got[tail:]
        second = RangeHandler.requests_seen[len(first):]
    assert got == (media / "v3.mp4").read_bytes()
    blocks = -(-size // int(0.01 * (1 << 20)))
    gets = [r for r in first if r[0] == "GET"]
    assert [r[0] for r in first + second].count("HEAD") == 1, first  # the lookup's size serves both opens
    assert sum(r[2] for r in gets) == size
    assert len(gets) < blocks / 4, (len(gets), blocks)  # runs of up to 16 blocks, not one block each
    assert second == [], second  # the last 64 blocks (640 KB) were kept

    with http_server(str(media)) as base, storage.using(StorageConfig(read_ahead_mb=0.01, read_ahead_max_mb=0.01)):
        RangeHandler.requests_seen.clear()
        with storage.open_media(f"{base}/v3.mp4") as f:
            assert b"".join(iter(lambda: f.read(32768), b"")) == got
        fixed = [r[2] for r in RangeHandler.requests_seen if r[0] == "GET"]
    assert len(fixed) == blocks and max(fixed) <= int(0.01 * (1 << 20))  # fixed blocks: one per request


@pytest.mark.parametrize("where,reason", [("stall", "read_error"), ("error", "read_error"), ("nope", "missing_media")])
def test_a_stalling_failing_or_missing_object_is_counted(media, tmp_path, where, reason):
    (tmp_path / where).mkdir()
    shutil.copy(media / "v0.mp4", tmp_path / where / "v0.mp4")  # served for "stall"/"error" never answer it
    ann = write_jsonl(tmp_path / "ann.jsonl", [
        {"id": "bad", "video": f"{where}/{'missing' if where == 'nope' else 'v0'}.mp4",
         "conversations": [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "ok", "video": "ok/v0.mp4", "conversations": [{"from": "human", "value": "<video>\nQ"},
                                                             {"from": "gpt", "value": "A"}]}])
    (tmp_path / "ok").mkdir()
    shutil.copy(media / "v0.mp4", tmp_path / "ok" / "v0.mp4")
    with http_server(str(tmp_path)) as base:
        cfg = config(ann, base)
        cfg["sampling"]["storage"] = {"timeout_s": 1, "retries": 1}
        t0 = time.monotonic()
        got = by_key(StreamingDataset(cfg, emit_drops=True))
    assert isinstance(got["s-00000001"], Sample)
    assert isinstance(got["s-00000000"], Drop) and got["s-00000000"].reason == reason, got["s-00000000"]
    assert time.monotonic() - t0 < 20


def test_local_cache_dir_serves_the_second_epoch(media, s3, tmp_path):
    cfg = config(f"s3://{BUCKET}/data/ann.jsonl", f"s3://{BUCKET}/data", s3)
    cfg["sampling"]["storage"] = {"cache_dir": str(tmp_path / "cache"), "cache_max_gb": 1}
    timing.enable()
    try:
        for epoch in range(2):
            timing.reset()
            ds = StreamingDataset(cfg)
            ds.set_epoch(epoch)
            assert len(list(ds)) == 4
            counts = timing.snapshot()["counts"]
            if epoch == 0:
                assert counts.get("bytes_read", 0) > 0
            else:
                assert counts.get("bytes_read", 0) == 0 and counts.get("cache_hits", 0) > 0
    finally:
        timing.enable(False)


def test_the_cache_bound_evicts_the_least_recently_used(tmp_path, media):
    from mmstream import storage

    with http_server(str(media)) as base:
        limit = os.path.getsize(media / "v2.mp4") * 1.01  # room for v2 alone, or for v1 and v0
        assert os.path.getsize(media / "v1.mp4") + os.path.getsize(media / "v0.mp4") < limit
        conf = storage._Settings(cache_dir=str(tmp_path / "c"), cache_max_gb=limit / (1 << 30))
        a = storage.cached_copy(f"{base}/v2.mp4", conf)
        b = storage.cached_copy(f"{base}/v1.mp4", conf)
        time.sleep(0.01)
        c = storage.cached_copy(f"{base}/v0.mp4", conf)
    assert not os.path.exists(a) and os.path.exists(b) and os.path.exists(c)


def test_path_escapes_are_refused_for_urls_too():
    from mmstream import storage
    from mmstream.errors import SampleError

    assert storage.join("s3://b/data", "x/y.mp4") == "s3://b/data/x/y.mp4"
    for bad in ("../secret.mp4", "/etc/passwd", "s3://other/x.mp4", "x/../../y.mp4"):
        with pytest.raises(SampleError) as err:
            storage.join("s3://b/data", bad)
        assert err.value.reason == "path_outside_root"
    assert storage.redact("https://user:pw@host/x?X-Amz-Signature=abc&y=1") == "https://***@host/x?X-Amz-Signature=***&y=1"


CHILD = """
import sys, time
sys.path.insert(0, sys.argv[4])
from mmstream import StreamingDataset
from mmstream.sinks import run_cache
import json

class Slow:
    def __init__(self, d): self.d = d
    def __iter__(self):
        for item in self.d:
            time.sleep(0.7)
            yield item

run_cache(json.loads(sys.argv[1]), sys.argv[2], workers=0, progress=False,
          dataset_factory=lambda c, **kw: Slow(StreamingDataset(c, **kw)))
"""


def test_cache_to_s3_survives_sigkill_and_verifies(media, s3, tmp_path):
    import s3fs

    cfg = config(f"s3://{BUCKET}/data/ann.jsonl", f"s3://{BUCKET}/data", s3)
    cfg["model"] = {"name": "minicpmv-2.5"}
    cfg["output"] = {"format": "minicpmv", "maxcount": 1, "options": {"staging_dir": str(tmp_path / "staging"),
                                                                      "storage_options": s3}}
    out = f"s3://{BUCKET}/cache"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), out, "", TESTS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint_url"], key=s3["key"], secret=s3["secret"])
    def recorded() -> bool:
        """A shard in the bucket and a rank manifest there that lists one (killed earlier, between
        a shard's upload and its manifest's, the rerun is a fresh run, not a resume)."""
        fs.invalidate_cache()
        try:
            listed = json.loads(fs.cat_file(f"{BUCKET}/cache/manifest.rank-0.json"))["shards"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(listed) and any(p.endswith(".tar") for p in fs.ls(f"{BUCKET}/cache", refresh=True))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not recorded():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    before = [p for p in fs.find(f"{BUCKET}/cache") if p.endswith(".tar")]
    assert before, "the run was killed before its first shard"
    shutil.rmtree(tmp_path / "staging")  # rerun as if on another machine: the bucket is all there is
    s = run_cache(cfg, out, workers=0, progress=False)
    assert s["kept"] == 4 and s["dropped"] == {"missing_media": 1} and s["resumed"] and s["finalized"]
    report = verify_url(out, _storage_cfg(s3))
    assert report.ok, str(report)
    fs.invalidate_cache()
    manifest = fs.cat_file(f"{BUCKET}/cache/manifest.json").decode()
    assert SECRET not in manifest and "***" in manifest
    assert len([p for p in fs.find(f"{BUCKET}/cache") if p.endswith(".tar")]) == 4


def _storage_cfg(options):
    from mmstream.config import StorageConfig

    return StorageConfig(options=options)
