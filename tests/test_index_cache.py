"""The record index cache (mmstream/sources/index_cache.py): built once per node however many
processes start together, rebuilt when an annotation file or a grouping field changes or the
file is damaged (never used then), memory-mapped, and the same epochs and keys as without it."""
import json
import logging
import mmap
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import text_records, write_jsonl
from mmstream.config import load_config
from mmstream.sources import index_cache
from mmstream.sources.index import RecordIndex

TESTS = os.path.dirname(os.path.abspath(__file__))

# one process of the "start together" tests: wait for the go file, open the index, report
OPENER = r"""
import hashlib, json, os, sys, time
ready, go, cfg = sys.argv[1:4]
from mmstream.config import load_config
from mmstream.sources.index import RecordIndex
config = load_config(json.loads(cfg))
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
index = RecordIndex.open(config)
digest = hashlib.sha256(b"".join(getattr(index, n).tobytes() for n in RecordIndex.ARRAYS)).hexdigest()
print(json.dumps({"status": index.cache["status"], "built": index.cache["built"], "digest": digest,
                  "positions": index.num_positions}))
"""


def start_together(config: dict, tmp_path, n: int = 4) -> list[dict]:
    """``RecordIndex.open(config)`` in ``n`` processes released at the same moment."""
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(n):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", OPENER, str(ready), str(go), json.dumps(config)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def big_text_config(tmp_path, n: int = 40000) -> dict:
    """A source large enough that building its index takes a while (the processes overlap)."""
    return {"sources": [{"name": "t", "format": "llava",
                         "annotations": write_jsonl(tmp_path / "big.jsonl", text_records(n))}]}


def test_four_processes_starting_together_build_it_once(tmp_path):
    config = big_text_config(tmp_path)
    results = start_together(config, tmp_path)
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["built", "loaded", "loaded", "loaded"], statuses
    assert len({json.dumps(r["built"], sort_keys=True) for r in results}) == 1  # one build, by one pid
    assert len({r["digest"] for r in results}) == 1 and results[0]["positions"] == 40000
    # and a restart loads it
    (tmp_path / "again").mkdir()
    again = start_together(config, tmp_path / "again", n=1)
    assert again[0]["status"] == "loaded" and again[0]["built"] == results[0]["built"]


def arrays_of(index: RecordIndex) -> dict:
    return {n: np.array(getattr(index, n)) for n in RecordIndex.ARRAYS}


def same_arrays(a: RecordIndex, b: RecordIndex) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(arrays_of(a).values(), arrays_of(b).values())) \
        and np.array_equal(a.group_cost, b.group_cost)


@pytest.fixture
def small(tmp_path):
    ann = write_jsonl(tmp_path / "a.jsonl", [
        {"id": f"r{i}", "video": f"v{i % 3}.mp4",
         "conversations": [{"from": "human", "value": f"<video>\nQ{i}?"}, {"from": "gpt", "value": "A"}]}
        for i in range(9)])
    return {"sources": [{"name": "s", "format": "llava", "annotations": ann, "media_root": str(tmp_path)}]}


def test_a_changed_annotation_file_or_grouping_field_rebuilds(small, tmp_path):
    first = RecordIndex.open(load_config(small))
    assert first.cache["status"] == "built" and first.num_groups == 3
    assert RecordIndex.open(load_config(small)).cache["status"] == "loaded"
    # a field that does not change records or groups: the same index
    other = dict(small, filter={"max_tokens": 100}, sampling={"fps": 2.0})
    assert RecordIndex.open(load_config(other)).cache["status"] == "loaded"
    # the file changes (one more record)
    ann = small["sources"][0]["annotations"]
    with open(ann, "a") as f:
        f.write(json.dumps({"id": "r9", "video": "v9.mp4", "conversations": [
            {"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A"}]}) + "\n")
    grown = RecordIndex.open(load_config(small))
    assert grown.cache["status"] == "built" and grown.num_positions == 10 and grown.num_groups == 4
    # the same size and content, written again (a new inode and times): rebuilt, never trusted
    data = open(ann, "rb").read()
    os.remove(ann)
    open(ann, "wb").write(data)
    assert RecordIndex.open(load_config(small)).cache["status"] == "built"
    # fields that decide records or groups
    for change in ({"media_root": str(tmp_path / "elsewhere")}, {"limit": 5}, {"format": "auto"}, {"name": "s2"},
                   {"max_record_mb": 1}, {"max_json_depth": 32}):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        cfg = {"sources": [dict(small["sources"][0], **change)]}
        got = RecordIndex.open(load_config(cfg))
        assert got.cache["status"] == "built", change
        assert same_arrays(got, RecordIndex.open(load_config(cfg), cache=False)), change


DAMAGE = {
    "truncated": lambda b: b[:-7],
    "one byte of the data flipped": lambda b: b[:-3] + bytes([b[-3] ^ 0x40]) + b[-2:],
    "extended": lambda b: b + b"\0" * 64,
    "another format version": lambda b: b[:8] + (index_cache.FORMAT_VERSION + 1).to_bytes(4, "little") + b[12:],
    "garbage": lambda b: os.urandom(len(b)),
    "empty": lambda b: b"",
    "header cut": lambda b: b[:40],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_file_is_rebuilt_never_used(small, damage, caplog):
    config = load_config(small)
    built = RecordIndex.open(config)
    path = built.cache["path"]
    good = open(path, "rb").read()
    with open(path + ".new", "wb") as f:
        f.write(DAMAGE[damage](good))
    os.replace(path + ".new", path)
    with caplog.at_level(logging.WARNING, logger="mmstream.sources.index_cache"):
        again = RecordIndex.open(config)
    assert again.cache["status"] == "built"
    assert same_arrays(again, built)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert RecordIndex.open(config).cache["status"] == "loaded"  # the rebuilt file is sound


def mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a memory-mapped file."""
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return isinstance(base, mmap.mmap)


def test_the_arrays_are_a_read_only_mapping_of_the_file(small):
    index = RecordIndex.open(load_config(small))
    index = RecordIndex.open(load_config(small))
    for name in RecordIndex.ARRAYS:
        a = getattr(index, name)
        assert not a.flags.writeable and mapped(a), name


def test_the_same_epochs_and_keys_as_without_a_cache(tmp_path):
    from mmstream import StreamingDataset
    from mmstream.demo import build_demo_data

    cfg = build_demo_data(tmp_path / "demo")
    StreamingDataset(cfg)  # builds the cache
    cached, plain = StreamingDataset(cfg), StreamingDataset(cfg, index_cache=False)
    assert cached.index.cache["status"] == "loaded" and plain.index.cache["status"] == "off"
    assert same_arrays(cached.index, plain.index)
    for epoch in range(3):
        assert np.array_equal(cached.epoch_groups(epoch), plain.epoch_groups(epoch))
        for total in (1, 3):
            for me in range(total):
                assert np.array_equal(cached.my_groups(me, total, epoch), plain.my_groups(me, total, epoch))
        keys = lambda ds: [getattr(i, "key", None) for i in ds.ordered(epoch)]  # noqa: E731
        assert keys(cached) == keys(plain)


def test_remote_annotations_are_downloaded_once_per_node(tmp_path):
    from servers import RangeHandler, http_server

    site = tmp_path / "site"
    site.mkdir()
    write_jsonl(site / "ann.jsonl", text_records(20000))
    size = os.path.getsize(site / "ann.jsonl")
    RangeHandler.requests_seen.clear()
    with http_server(str(site)) as url:
        config = {"sources": [{"name": "t", "format": "llava", "annotations": f"{url}/ann.jsonl"}]}
        results = start_together(config, tmp_path)
    assert sorted(r["status"] for r in results) == ["built", "loaded", "loaded", "loaded"]
    got = sum(n for method, path, n in RangeHandler.requests_seen if method == "GET" and path == "/ann.jsonl")
    assert got == size  # one download, by one process, for the four


def test_a_cache_folder_that_cannot_be_made_builds_in_the_process(small, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = load_config(dict(small, sampling={"storage": {"cache_dir": str(blocker / "cache")}}))
    with caplog.at_level(logging.WARNING, logger="mmstream.sources.index_cache"):
        index = RecordIndex.open(config)
    assert index.cache["status"] == "built" and index.num_positions == 9
    assert same_arrays(index, RecordIndex.open(config, cache=False))
    assert any("cannot use the record index cache" in r.getMessage() for r in caplog.records)


def test_the_cache_goes_to_sampling_storage_cache_dir(small, tmp_path):
    config = load_config(dict(small, sampling={"storage": {"cache_dir": str(tmp_path / "node_cache")}}))
    index = RecordIndex.open(config)
    assert index.cache["path"].startswith(str(tmp_path / "node_cache" / "index") + os.sep)
    assert RecordIndex.open(config).cache["status"] == "loaded"


def test_a_pickled_index_maps_the_nodes_file_again(small):
    """What a spawn/forkserver DataLoader worker or a Ray worker gets: the node's file mapped
    again while it is the same index, else the pickled arrays."""
    import pickle

    index = RecordIndex.open(load_config(small))
    copy = pickle.loads(pickle.dumps(index))
    assert same_arrays(copy, index) and mapped(copy.offset)
    os.remove(index.cache["path"])  # another node, or rebuilt since: the arrays that came along
    alone = pickle.loads(pickle.dumps(index))
    assert same_arrays(alone, index) and not mapped(alone.offset)
