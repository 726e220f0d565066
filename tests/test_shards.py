"""Shard writing: atomic renames, write errors, manifests, verify, resume bookkeeping."""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import pathlib
import tarfile

import pytest

from mmstream.errors import MmstreamError
from mmstream.sinks import ShardWriter, WriteError, finalize, run_cache, verify
from mmstream.sinks import shards as shards_module
from mmstream.sinks.energon import parse_split_ratio, split_shards
from mmstream.sinks.formats import Encoded
from mmstream.sinks.manifest import RankManifest, load_rank_manifests
from mmstream.sinks.shards import parse_shard_name, shard_name
from sink_samples import FakeDataset, cache_config, drop, video_sample


def enc(i: int) -> Encoded:
    return Encoded(key=f"k-{i:08d}", members=[("txt", f"sample {i}".encode()), ("json", b"{}")])


def visible_shards(directory) -> list[str]:
    """What a reader globbing for shards sees (energon prepare uses **/*.tar)."""
    return sorted(str(p.relative_to(directory)) for p in pathlib.Path(directory).glob("**/*.tar"))


def test_writer_rotates_at_maxcount_and_renames_only_complete_shards(tmp_path):
    committed = []
    w = ShardWriter(str(tmp_path), lambda i: f"s-{i:06d}.tar", maxcount=2, on_commit=committed.append)
    w.write(enc(0))
    # open shard: only a temporary file, which no shard glob matches
    assert visible_shards(tmp_path) == []
    assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "*"))] == [f"s-000000.tar.tmp-{os.getpid()}"]
    w.write(enc(1))  # 2 = maxcount: committed now, not at the next write
    assert visible_shards(tmp_path) == ["s-000000.tar"]
    w.write(enc(2))
    assert visible_shards(tmp_path) == ["s-000000.tar"]
    w.close()
    assert visible_shards(tmp_path) == ["s-000000.tar", "s-000001.tar"]
    assert not glob.glob(str(tmp_path / "*.tmp-*"))
    assert [(c.name, c.count, c.keys) for c in committed] == [
        ("s-000000.tar", 2, ["k-00000000", "k-00000001"]), ("s-000001.tar", 1, ["k-00000002"])]
    for c in committed:
        data = (tmp_path / c.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == c.sha256 and len(data) == c.bytes
    with tarfile.open(tmp_path / "s-000000.tar") as tar:
        assert tar.getnames() == ["k-00000000.txt", "k-00000000.json", "k-00000001.txt", "k-00000001.json"]
        assert tar.extractfile("k-00000001.txt").read() == b"sample 1"


def test_same_samples_give_the_same_bytes(tmp_path):
    shas = []
    for run in ("a", "b"):
        os.makedirs(tmp_path / run)
        with ShardWriter(str(tmp_path / run), lambda i: f"s-{i}.tar", maxcount=10) as w:
            for i in range(3):
                w.write(enc(i))
        shas.append(w.committed[0].sha256)
    assert shas[0] == shas[1]


def test_exception_inside_writer_leaves_no_temporary_and_keeps_committed(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path), lambda i: f"s-{i}.tar", maxcount=2) as w:
            for i in range(3):
                w.write(enc(i))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["s-0.tar"]


def _read_only_open(real_open, fail_from: int):
    """``open`` that fails like a read-only mount from the ``fail_from``-th new shard on."""
    state = {"n": 0}

    def fake(path, mode="r", *args, **kwargs):
        if "w" in mode and ".tar.tmp-" in str(path):
            state["n"] += 1
            if state["n"] >= fail_from:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)
    return fake


def test_read_only_output_raises_a_clear_error_and_keeps_completed_shards(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = [video_sample(f"src-{i:08d}", 2) for i in range(5)]
    monkeypatch.setattr(shards_module, "open", _read_only_open(open, fail_from=2), raising=False)
    with pytest.raises(WriteError) as err:
        run_cache(cache_config("megatron", maxcount=2), str(out), workers=0, progress=False,
                  dataset_factory=FakeDataset.factory(items))
    msg = str(err.value)
    assert str(out / "pretrain-000001.tar") in msg and "Read-only file system" in msg and "EROFS" in msg
    assert isinstance(err.value, MmstreamError)
    assert visible_shards(out) == ["pretrain-000000.tar"]
    assert not glob.glob(str(out / "*.tmp-*"))
    m = RankManifest.load(str(out), 0)
    assert [s["name"] for s in m.shards] == ["pretrain-000000.tar"] and not m.complete
    sha = hashlib.sha256((out / "pretrain-000000.tar").read_bytes()).hexdigest()
    assert m.shards[0]["sha256"] == sha
    # the mount is writable again: the same command continues after the kept shard
    monkeypatch.undo()
    s = run_cache(cache_config("megatron", maxcount=2), str(out), workers=0, progress=False,
                  dataset_factory=FakeDataset.factory(items), finalize=False)
    assert s["resumed"] and s["kept"] == 5 and s["kept_this_run"] == 3
    assert FakeDataset.calls[-1]["skip_keys"] == {"src-00000000", "src-00000001"}
    assert (out / "pretrain-000000.tar").read_bytes() and hashlib.sha256(
        (out / "pretrain-000000.tar").read_bytes()).hexdigest() == sha


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0555) folder anyway; the "
                                              "EROFS case above covers the error path")
def test_permission_denied_names_the_path(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(WriteError, match=str(tmp_path)):
            with ShardWriter(str(tmp_path), lambda i: f"s-{i}.tar", maxcount=2) as w:
                w.write(enc(0))
    finally:
        os.chmod(tmp_path, 0o755)


def _cache(out, items, **kw):
    cfg = kw.pop("config", None) or cache_config("minicpmv", maxcount=2)
    return run_cache(cfg, str(out), workers=kw.pop("workers", 0), progress=False,
                     dataset_factory=FakeDataset.factory(items, kw.pop("fail_after", None)), **kw)


def _items(n=7, drops=(3,), fmt="minicpmv"):
    return [drop(f"src-{i:08d}") if i in drops else video_sample(f"src-{i:08d}", 2, fmt=fmt) for i in range(n)]


def test_manifest_records_counts_keys_and_drops_and_verify_passes(tmp_path):
    s = _cache(tmp_path, _items())
    assert s["finalized"] and s["kept"] == 6 and s["dropped"] == {"decode_error": 1} and s["shards"] == 3
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["counts"] == {"kept": 6, "dropped": {"decode_error": 1}, "dropped_total": 1, "shards": 3}
    assert [sh["count"] for sh in m["shards"]] == [2, 2, 2]
    assert [sh["keys"] for sh in m["shards"]][1] == ["src-00000002", "src-00000004"]
    # the drop is covered by the shard committed after it
    assert m["shards"][1]["dropped"] == [{"key": "src-00000003", "reason": "decode_error", "source": "src"}]
    assert m["config"]["output"]["format"] == "minicpmv" and m["packages"]["webdataset"]
    for sh in m["shards"]:
        assert hashlib.sha256((tmp_path / sh["name"]).read_bytes()).hexdigest() == sh["sha256"]
    report = verify(str(tmp_path))
    assert report.ok, str(report)
    assert report.samples == 6


def test_verify_fails_when_one_byte_changes(tmp_path):
    from mmstream.cli import verify as verify_cli

    _cache(tmp_path, _items())
    path = tmp_path / "minicpmv-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01  # inside a member's payload: still a valid tar
    path.write_bytes(bytes(data))
    report = verify(str(tmp_path))
    assert not report.ok
    assert any("minicpmv-000001.tar" in p and "sha256" in p for p in report.problems)
    parser = __import__("argparse").ArgumentParser()
    verify_cli.register(parser.add_subparsers())
    assert verify_cli.run(parser.parse_args(["verify", str(tmp_path)])) == 1


def test_verify_catches_a_missing_sample(tmp_path):
    _cache(tmp_path, _items())
    path = tmp_path / "minicpmv-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:  # rewritten without the first sample
        for m, data in members:
            if not m.name.startswith("src-00000000."):
                import io
                tar.addfile(m, io.BytesIO(data))
    problems = verify(str(tmp_path)).problems
    assert any("1 sample(s), manifest says 2" in p for p in problems)
    assert any("keys differ" in p for p in problems)


def test_crash_mid_run_then_rerun_gives_every_key_once(tmp_path):
    items = _items(9, drops=(1,))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cache(tmp_path, items, fail_after=6)  # 6 items: 5 samples (2 shards + 1 open) and 1 drop
    assert visible_shards(tmp_path) == ["minicpmv-000000.tar", "minicpmv-000001.tar"]
    assert not glob.glob(str(tmp_path / "*.tmp-*"))
    s = _cache(tmp_path, items)
    assert FakeDataset.calls[-1]["skip_keys"] == {f"src-{i:08d}" for i in range(5)}  # 4 kept + 1 drop
    assert s["resumed"] and s["shards_this_run"] == 2
    m = json.loads((tmp_path / "manifest.json").read_text())
    keys = [k for sh in m["shards"] for k in sh["keys"]]
    assert sorted(keys) == [f"src-{i:08d}" for i in range(9) if i != 1]
    assert [sh["name"] for sh in m["shards"]] == [f"minicpmv-00000{i}.tar" for i in range(4)]
    assert m["counts"]["dropped"] == {"decode_error": 1}
    assert verify(str(tmp_path)).ok


def test_a_shard_renamed_but_not_recorded_is_redone(tmp_path):
    """kill -9 between the rename and the manifest write leaves an unlisted shard."""
    items = _items(6, drops=())
    _cache(tmp_path, items, finalize=False)
    m = RankManifest.load(str(tmp_path), 0)
    lost = m.shards.pop()  # as if the manifest write after this shard never happened
    m.complete = False
    m.save()
    (tmp_path / "minicpmv-000009.tar.tmp-12345").write_bytes(b"partial")  # a dead run's temp file
    s = _cache(tmp_path, items)
    assert s["kept_this_run"] == lost["count"]
    assert visible_shards(tmp_path) == ["minicpmv-000000.tar", "minicpmv-000001.tar", "minicpmv-000002.tar"]
    assert not glob.glob(str(tmp_path / "*.tmp-*"))
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(k for sh in m["shards"] for k in sh["keys"]) == [f"src-{i:08d}" for i in range(6)]
    assert verify(str(tmp_path)).ok


def test_rerun_after_completion_does_nothing(tmp_path):
    items = _items()
    _cache(tmp_path, items)
    before = (tmp_path / "manifest.json").read_text()
    n_calls = len(FakeDataset.calls)
    s = _cache(tmp_path, items)
    assert s["kept_this_run"] == 0 and s["kept"] == 6 and len(FakeDataset.calls) == n_calls
    assert json.loads(before)["shards"] == json.loads((tmp_path / "manifest.json").read_text())["shards"]


def test_changed_config_or_world_size_is_refused(tmp_path):
    _cache(tmp_path, _items(), finalize=False)
    with pytest.raises(MmstreamError, match="different config.*output"):
        _cache(tmp_path, _items(), config=cache_config("minicpmv", maxcount=3))
    with pytest.raises(MmstreamError, match="world size 1"):
        _cache(tmp_path, _items(), rank=1, world_size=2)
    s = _cache(tmp_path, _items(), config=cache_config("minicpmv", maxcount=3), resume=False)
    assert s["shards"] == 2 and not s["resumed"]
    assert visible_shards(tmp_path) == ["minicpmv-000000.tar", "minicpmv-000001.tar"]


def test_two_ranks_then_finalize_equal_one_rank(tmp_path):
    items = _items(9, drops=(4,))
    one = _cache(tmp_path / "one", items)
    s0 = _cache(tmp_path / "two", items, rank=0, world_size=2)
    assert not s0["finalized"]  # rank 1 has not run
    with pytest.raises(MmstreamError, match=r"rank\(s\) \[1\]"):
        finalize(str(tmp_path / "two"))
    s1 = _cache(tmp_path / "two", items, rank=1, world_size=2, workers=2)
    assert s1["finalized"]  # the last rank to finish merges
    keys = {}
    for name in ("one", "two"):
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        keys[name] = sorted(k for sh in m["shards"] for k in sh["keys"])
        assert m["counts"]["dropped"] == {"decode_error": 1}
    assert keys["one"] == keys["two"] and len(keys["one"]) == 8 and one["kept"] == 8
    # rank 0: records 0 2 4 6 8 (4 is dropped), rank 1: 1 3 5 7; 2 per shard
    assert visible_shards(tmp_path / "two") == ["minicpmv-r0-000000.tar", "minicpmv-r0-000001.tar",
                                                "minicpmv-r1-000000.tar", "minicpmv-r1-000001.tar"]
    assert len(load_rank_manifests(str(tmp_path / "two"))) == 2
    assert verify(str(tmp_path / "two")).ok


def test_rank_defaults_from_torchrun_then_slurm(monkeypatch):
    from mmstream.dist import resolve_rank

    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert resolve_rank() == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_rank() == (1, 2)
    assert resolve_rank(0, 3) == (0, 3)
    with pytest.raises(MmstreamError):
        resolve_rank(2, 2)


@pytest.mark.parametrize("n, ratio, expect", [
    (1, (8, 1, 1), (1, 0, 0)),    # energon's own rounding gives train 0 here
    (2, (1, 1, 1), (2, 0, 0)),
    (3, (1, 1, 1), (1, 1, 1)),
    (10, (8, 1, 1), (8, 1, 1)),
    (2, (0.5, 0.5, 0), (1, 1, 0)),
    (1, (0.1, 0.9, 0), (1, 0, 0)),
    (0, (8, 1, 1), (0, 0, 0)),
])
def test_split_by_whole_shards_never_leaves_train_empty(n, ratio, expect):
    names = [shard_name("pretrain", i) for i in range(n)]
    split = split_shards(reversed(names), ratio)
    assert tuple(len(split[p]) for p in ("train", "val", "test")) == expect
    assert sorted(sum(split.values(), [])) == names
    assert split["train"] == names[:expect[0]]


def test_split_ratio_parsing():
    assert parse_split_ratio(None) == (1.0, 0.0, 0.0)
    assert parse_split_ratio("8,1,1") == (8.0, 1.0, 1.0)
    assert parse_split_ratio([0.9, 0.1, 0]) == (0.9, 0.1, 0.0)
    for bad in ("8,1", "0,1,1", "a,b,c", [1, -1, 0]):
        with pytest.raises(MmstreamError):
            parse_split_ratio(bad)


def test_shard_names_round_trip():
    assert shard_name("pretrain", 7) == "pretrain-000007.tar"
    assert shard_name("pretrain", 7, rank=1, world_size=2) == "pretrain-r1-000007.tar"
    assert parse_shard_name("pretrain-r1-000007.tar") == {"prefix": "pretrain", "rank": 1, "writer": None, "index": 7,
                                                          "ext": "tar"}
    assert parse_shard_name("my-data-000002.json") == {"prefix": "my-data", "rank": None, "writer": None, "index": 2,
                                                       "ext": "json"}
    assert parse_shard_name("pretrain-000007.tar.tmp-99") is None
    # written by a Ray writer (mmstream cache --engine ray)
    assert shard_name("pretrain", 7, writer=3) == "pretrain-w3-000007.tar"
    assert parse_shard_name(shard_name("my-data", 2, rank=1, world_size=2, writer=12, ext="json")) == \
        {"prefix": "my-data", "rank": 1, "writer": 12, "index": 2, "ext": "json"}


def test_output_format_needs_a_matching_model(tmp_path):
    from mmstream.config import load_config

    def cfg(model):
        d = {"sources": [{"name": "src", "annotations": "/x.json"}], "output": {"format": "megatron"}}
        if model:
            d["model"] = {"name": model}
        return load_config(d)

    with pytest.raises(MmstreamError, match="add a `model:` section"):
        run_cache(cfg(None), str(tmp_path), workers=0, progress=False, dataset_factory=FakeDataset.factory([]))
    with pytest.raises(MmstreamError, match="writes 'minicpmv'"):
        run_cache(cfg("minicpmv-2.6"), str(tmp_path), workers=0, progress=False,
                  dataset_factory=FakeDataset.factory([]))


def test_a_rank_already_running_is_refused(tmp_path):
    import subprocess
    import sys

    lock = tmp_path / ".mmstream" / "rank-0.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(60)\n", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MmstreamError, match="cache rank 0 .* already running"):
            _cache(tmp_path, _items())
    finally:
        holder.kill()
        holder.wait()
    assert _cache(tmp_path, _items())["kept"] == 6
