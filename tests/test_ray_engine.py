"""mmstream cache --engine ray on a local Ray instance (2 CPUs): the same output as the local
engine (files layout: records and frame files; wds: every sample's tar members, byte for
byte) with the shards written by the Ray workers (the driver receives only manifest
entries), a killed Ray worker's task retried (output complete, exactly once), and a killed
driver resumed."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

pytest.importorskip("ray")

from mmstream.sinks import run_cache, verify  # noqa: E402
from mmstream.sinks.shards import parse_shard_name  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from mmstream.demo import build_demo_data

    return build_demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory):
    """The local engine's cache of the demo data."""
    out = tmp_path_factory.mktemp("local")
    run_cache(demo, str(out), workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Eight counter clips, each its own decode group, and their local-engine cache."""
    import yaml

    from conftest import write_jsonl
    from mmstream.synth import encode_counter_video

    root = tmp_path_factory.mktemp("small")
    recs = []
    for i in range(8):
        encode_counter_video(root / f"v{i}.mp4", num_frames=10, fps="5", size=(96, 72))
        recs.append({"id": f"r{i}", "video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": f"<video>\nQ{i}?"}, {"from": "gpt", "value": "A"}]})
    write_jsonl(root / "a.jsonl", recs)
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": "a.jsonl"}],
           "sampling": {"fps": 2, "max_frames": 4, "decoder": "backends:SlowBackend"},
           "model": {"name": "minicpmv-2.5"}, "output": {"format": "minicpmv", "layout": "files", "maxcount": 2}}
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "ref"
    os.environ["MMSTREAM_TEST_DECODE_SLEEP"] = "0"
    try:
        run_cache(str(path), str(out), workers=0, progress=False)
    finally:
        del os.environ["MMSTREAM_TEST_DECODE_SLEEP"]
    return str(path), out


def cache_contents(out):
    """(records by key, frame bytes by path) of a files-layout cache."""
    m = json.loads((out / "manifest.json").read_text())
    keys = sorted(k for s in m["shards"] for k in s["keys"])
    records = {}
    for s in m["shards"]:
        for rec, key in zip(json.loads((out / s["name"]).read_text()), s["keys"]):
            records[key] = rec
    frames = {}
    for rec in records.values():
        for p in (rec["image"].values() if isinstance(rec["image"], dict) else [rec["image"]]):
            frames[p] = (out / p).read_bytes()
    return keys, records, frames, m


def listed_shards(out) -> int:
    """How many shards the rank manifest lists (0 before it exists or while it is replaced)."""
    try:
        return len(json.loads((out / "manifest.rank-0.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def env():
    return dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mmstream.cli", *args], capture_output=True, text=True,
                          env=env(), timeout=600, **kw)


def test_ray_engine_writes_what_the_local_engine_writes(demo, reference, tmp_path):
    local, ray_out = reference, tmp_path / "ray"
    res = cli("cache", demo, "--output", str(ray_out), "--engine", "ray", "--workers", "2", "--no-progress", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = cache_contents(local), cache_contents(ray_out)
    assert a[0] == b[0] and a[1] == b[1]  # the same keys, every record the same
    assert a[2] == b[2]  # every frame file, byte for byte
    counts = lambda m: {k: v for k, v in m["counts"].items() if k != "shards"}  # noqa: E731 (boundaries differ)
    assert counts(a[3]) == counts(b[3])
    assert b[3]["engines"] == {"0": "ray"} and a[3]["engines"] == {"0": "local"}
    assert b[3]["runs"]["0"]["kept"] == a[3]["counts"]["kept"] and b[3]["runs"]["0"]["samples_per_s"] > 0
    assert all(parse_shard_name(s["name"])["writer"] is not None for s in b[3]["shards"])  # written by workers
    assert verify(str(ray_out)).ok


def tar_samples(out) -> dict:
    """{key: {member extension: bytes}} over every shard of a finalized wds cache."""
    m = json.loads((out / "manifest.json").read_text())
    samples: dict = {}
    for s in m["shards"]:
        with tarfile.open(out / s["name"]) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_ray_workers_upload_the_local_engines_samples_to_a_bucket(demo, tmp_path):
    """wds into a bucket: each Ray writer uploads its shards on commit; every sample's tar members
    are the local engine's, byte for byte; the driver received only manifest entries."""
    import boto3
    import s3fs
    import yaml

    from mmstream.config import StorageConfig
    from mmstream.sinks.remote import verify_url
    from servers import s3_server

    local = tmp_path / "local"
    assert cli("cache", demo, "--output", str(local), "--layout", "wds", "--workers", "1", "--no-progress").returncode == 0
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="out")
        cfg = yaml.safe_load(open(demo))
        cfg["output"] = dict(cfg["output"], layout="wds", options={"staging_dir": str(tmp_path / "staging"),
                                                                    "storage_options": opts})
        bucket_cfg = os.path.join(os.path.dirname(demo), "to_bucket.yaml")  # beside it: the same relative paths
        with open(bucket_cfg, "w") as f:
            yaml.safe_dump(cfg, f)
        res = cli("cache", bucket_cfg, "--output", "s3://out/cache", "--engine", "ray", "--workers", "2",
                  "--no-progress", "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        assert verify_url("s3://out/cache", StorageConfig(options=opts)).ok
        got = tmp_path / "got"
        s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing").get("out/cache/", str(got),
                                                                                         recursive=True)
    a, b = tar_samples(local), tar_samples(got)
    assert sorted(a) == sorted(b) and a == b  # the same keys, each sample's members byte for byte
    m = json.loads((got / "manifest.json").read_text())
    assert all(parse_shard_name(s["name"])["writer"] is not None for s in m["shards"])  # written by workers
    run = m["runs"]["0"]
    frames = sum(len(v) for sample in b.values() for ext, v in sample.items() if ext.endswith("jpg"))
    assert run["shard_bytes_written"] == sum(os.path.getsize(p) for p in got.glob("*.tar"))
    assert 0 < run["driver_bytes_received"] < frames / 10  # keys and hashes, not the frames


def ray_workers():
    """pids of Ray worker processes running our tasks."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and ("_task" in cmd or "Writer" in cmd):
            out.append(int(pid))
    return out


def slow_ray_cache(cfg, out, **popen):
    """``mmstream cache --engine ray`` in the background, one second per decode."""
    return subprocess.Popen([sys.executable, "-m", "mmstream.cli", "cache", cfg, "--output", str(out), "--engine",
                             "ray", "--workers", "2", "--no-progress"],
                            env=dict(env(), MMSTREAM_TEST_DECODE_SLEEP="1.0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def assert_same_cache(reference, out):
    """The same keys (each once), records and frame bytes as the reference cache."""
    a, b = cache_contents(reference), cache_contents(out)
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]


def test_a_killed_ray_worker_is_retried_and_nothing_is_lost(small, tmp_path):
    cfg, reference = small
    out = tmp_path / "out"
    proc = slow_ray_cache(cfg, out)
    killed = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and killed is None and proc.poll() is None:
        if ray_workers():
            time.sleep(1.5)  # into a decode
            workers = ray_workers()
            if workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed, "no Ray worker ran a task"
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert_same_cache(reference, out)  # complete, every key once
    assert verify(str(out)).ok


def test_a_killed_driver_resumes(small, tmp_path):
    cfg, reference = small
    out = tmp_path / "out"
    proc = slow_ray_cache(cfg, out, start_new_session=True)
    deadline = time.monotonic() + 180
    # a shard counts once the rank manifest lists it (its part file is written just before)
    while time.monotonic() < deadline and not listed_shards(out):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
    proc.wait()
    assert 1 <= listed_shards(out) < 4
    res = subprocess.run([sys.executable, "-m", "mmstream.cli", "cache", cfg, "--output", str(out), "--engine", "ray",
                          "--workers", "2", "--no-progress", "--json"], capture_output=True, text=True,
                         env=dict(env(), MMSTREAM_TEST_DECODE_SLEEP="0"), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["resumed"] and summary["already_done"] > 0 and summary["finalized"]
    assert_same_cache(reference, out)
    assert verify(str(out)).ok


def test_task_batches_cover_every_group_once_large_first_small_last():
    import numpy as np

    from mmstream.sinks.ray_engine import SMALLEST, plan_batches

    costs = np.concatenate([[60.0], np.full(40, 0.7)])  # one long video among short ones, costliest first
    sizes = np.full(41, 2)
    batches = plan_batches(np.arange(41), costs, sizes, 2, maxcount=16)
    assert [g for b in batches for g in b] == list(range(41))  # each once, in the costliest-first order
    assert batches[0] == [0]  # the long video alone, first
    assert all(sizes[b].sum() <= 16 for b in batches)
    loads = [costs[b].sum() for b in batches[1:]]
    assert loads == sorted(loads, reverse=True)  # guided: smaller and smaller batches
    whole = costs.sum()
    for b in batches[1:-1]:  # each holds a share of the rest, not less than the floor
        assert costs[b].sum() >= whole / (SMALLEST * 2) - 0.7
    assert len(plan_batches(np.arange(41), costs, sizes, 2, maxcount=1)) == 41  # maxcount: one group each


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """A 20 s clip sampled densely (300 frames: over half the run's decode work, as the cost
    model sees it) beside two short ones, and their local-engine cache (files layout)."""
    import yaml

    from conftest import write_jsonl
    from mmstream.synth import encode_counter_video

    root = tmp_path_factory.mktemp("skewed")
    encode_counter_video(root / "long.mp4", num_frames=500, fps="25", size=(96, 72), gop=50, bframes=2)
    recs = [{"id": "long", "video": "long.mp4"}]
    for i in range(2):
        encode_counter_video(root / f"s{i}.mp4", num_frames=20, fps="25", size=(96, 72))
        recs.append({"id": f"s{i}", "video": f"s{i}.mp4"})
    write_jsonl(root / "a.jsonl", [dict(r, conversations=[{"from": "human", "value": "<video>\nWhat?"},
                                                          {"from": "gpt", "value": "A"}]) for r in recs])
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": "a.jsonl"}],
           "sampling": {"fps": 15, "max_frames": None, "strategy": "none"},
           "model": {"name": "minicpmv-2.5"}, "output": {"format": "minicpmv", "layout": "files", "maxcount": 2}}
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_cache(str(path), str(root / "ref"), workers=0, progress=False)
    return str(path), root / "ref"


def test_a_long_clip_is_decoded_in_parts_by_two_workers_and_the_cache_is_the_same(skewed, tmp_path):
    cfg, reference = skewed
    out = tmp_path / "ray"
    res = cli("cache", cfg, "--output", str(out), "--engine", "ray", "--workers", "2", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_cache(reference, out)  # every frame of the joined clip byte for byte
    m = json.loads((out / "manifest.json").read_text())
    assert m["runs"]["0"]["clips_decoded_in_parts"] == 1


def test_parts_follow_a_groups_share_of_the_run():
    from mmstream.sinks.ray_engine import GUIDED, parts_for

    assert GUIDED == 2
    assert parts_for(55, 74, cpus=2, max_parts=64) == 2  # the 30-minute video of the skewed benchmark set
    assert parts_for(55, 74, cpus=8, max_parts=64) == 8
    assert parts_for(55, 74, cpus=8, max_parts=3) == 3
    assert parts_for(55, 74, cpus=8, max_parts=1) == 1
    assert parts_for(1, 100, cpus=8, max_parts=64) == 1  # a group like the others: whole
    assert parts_for(10, 80, cpus=4, max_parts=64) == 1 and parts_for(20, 80, cpus=4, max_parts=64) == 2
    assert parts_for(0, 0, cpus=2, max_parts=64) == 1


def test_a_ray_writer_runs_the_stream_without_importing_torch(small, tmp_path):
    """What a Ray task runs (a Writer over the stream the driver puts in Ray's object store:
    ``as_stream()``), in a Ray worker of a local instance: every group written, the local
    engine's keys, and torch never imported there (~1.7 s and a few hundred MB a worker).
    (A model with a tokenizer still imports it: transformers' AutoTokenizer does.)"""
    import pickle

    from mmstream.config import load_config
    from mmstream.dataset import StreamingDataset
    from mmstream.sinks.cache import shard_prefix
    from mmstream.sinks.ray_engine import WriterSpec

    path, reference = small
    ds = StreamingDataset(path)
    config = load_config(path)
    spec = WriterSpec(config.output, str(tmp_path / "out"), shard_prefix(config), 0, 1)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((ds.as_stream(), spec, len(ds.index.group_cost))))
    code = """
import json, pickle, sys
import ray
from mmstream.sinks.ray_engine import Writer


def write(stream, spec, groups):
    w = Writer(stream, spec, 0)
    results = [w.run([g]) for g in range(groups)] + [w.close()]
    return {"torch": "torch" in sys.modules, "type": type(stream).__name__,
            "keys": sorted(k for r in results for s in r.shards for k in s.keys)}


ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
stream, spec, groups = pickle.load(open(sys.argv[1], "rb"))
print(json.dumps(ray.get(ray.remote(write).remote(ray.put(stream), spec, groups))))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.pkl")], capture_output=True, text=True,
                          env=dict(env(), MMSTREAM_TEST_DECODE_SLEEP="0", RAY_AUTH_MODE="disabled"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    want = sorted(k for s in json.loads((reference / "manifest.json").read_text())["shards"] for k in s["keys"])
    assert got["type"] == "Stream" and got["keys"] == want
    assert got["torch"] is False


def test_a_ray_cache_run_never_imports_torch_in_the_driver(small, tmp_path):
    """The Ray engine's driver plans, ships the stream and merges manifests; it runs no
    DataLoader, so a whole ``run_cache(engine="ray")`` leaves torch unimported there (its
    ~1.7 s of import would take the cores Ray's processes start on), and the cache is the
    local engine's."""
    path, reference = small
    code = """
import json, sys
from mmstream.sinks import run_cache
summary = run_cache(sys.argv[1], sys.argv[2], engine="ray", workers=2, progress=False)
print(json.dumps({"torch": "torch" in sys.modules, "kept": summary["kept"]}))
"""
    done = subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "out")], capture_output=True, text=True,
                          env=dict(env(), MMSTREAM_TEST_DECODE_SLEEP="0", RAY_AUTH_MODE="disabled"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    keys, records, frames, _ = cache_contents(tmp_path / "out")
    want_keys, want_records, want_frames, _ = cache_contents(reference)
    assert got["kept"] == len(want_keys) and keys == want_keys and records == want_records and frames == want_frames
