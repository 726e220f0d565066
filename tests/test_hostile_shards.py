"""Hostile tar shards (issue 22, item 3, the shard half): ``verify`` and the adapters that
read shards refuse links, devices, names that climb out or are absolute, and members
larger than the shard, from their headers, without extracting anything; the stream
skips and counts them. The hostile tars are made here with ``tarfile``."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from mmstream.sinks import run_cache, verify
from mmstream.sinks.tarscan import MAX_HEADER_BYTES, UnsafeShard, member_problem, name_problem, shard_keys
from sink_samples import FakeDataset, cache_config, video_sample
from training_adapters.idefics3 import Idefics3Dataset
from training_adapters.minicpmv import MiniCPMVShards, MiniCPMVShardStream

KEYS = [f"src-{i:08d}" for i in range(4)]


def hostile_member(kind: str) -> tuple[tarfile.TarInfo, bytes]:
    data = b'{"x": 1}'
    names = {"climb": "../escape.json", "climb_inner": "src-00000000/../../escape.json",
             "absolute": "/tmp/mmstream-escape.json", "backslash": "..\\escape.json"}
    if kind in names:
        info = tarfile.TarInfo(names[kind])
        info.size = len(data)
        return info, data
    info = tarfile.TarInfo("src-00000000.extra.jpg")
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE,
                 "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "folder": tarfile.DIRTYPE}[kind]
    if kind == "symlink":
        info.linkname = "/etc/passwd"
    elif kind == "hardlink":
        info.linkname = "src-00000000.json"
    elif kind in ("chardev", "blockdev"):
        info.devmajor, info.devminor = 1, 3
    return info, b""


REASONS = {"climb": "climbs out", "climb_inner": "climbs out", "absolute": "absolute", "backslash": "climbs out",
           "symlink": "symbolic link", "hardlink": "hard link", "chardev": "character device",
           "blockdev": "block device", "fifo": "FIFO", "folder": "folder", "huge": "past the",
           "pax_huge": "header block"}


def rewrite_shard(out, kind: str) -> str:
    """Shard 0 of the cache rewritten with one hostile member among its own; the manifest
    and wids.json updated to its new bytes, so that only the member checks can catch it."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][0]
    path = out / entry["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, (m, data) in enumerate(members):
            if i == len(members) // 2 and kind not in ("huge", "pax_huge"):
                info, extra = hostile_member(kind)
                tar.addfile(info, io.BytesIO(extra) if extra else None)
            tar.addfile(m, io.BytesIO(data))
    raw = buf.getvalue()
    end = len(raw) - 1024
    while raw[end - 512:end] == b"\0" * 512:  # back to the end of the last member
        end -= 512
    if kind == "huge":  # a header that declares a gigabyte, then 512 bytes
        info = tarfile.TarInfo("src-00000001.huge.jpg")
        info.size = 10 ** 9
        raw = raw[:end] + info.tobuf(format=tarfile.USTAR_FORMAT) + b"\xff" * 512 + b"\0" * 1024
    elif kind == "pax_huge":  # a pax record block that claims 100 MB
        pax = tarfile.TarInfo("././@PaxHeader")
        pax.type, pax.size = tarfile.XHDTYPE, 100 << 20
        raw = raw[:end] + pax.tobuf(format=tarfile.USTAR_FORMAT) + b"0 x\n".ljust(512, b"\0") + b"\0" * 1024
    path.write_bytes(raw)
    entry["bytes"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    desc = json.loads((out / "wids.json").read_text())
    desc["shardlist"][0]["filesize"] = len(raw)
    (out / "wids.json").write_text(json.dumps(desc))
    return entry["name"]


def everything_under(root) -> set[str]:
    return {os.path.join(d, n) for d, dirs, files in os.walk(root) for n in files + dirs}


@pytest.fixture
def cache(tmp_path):
    out = tmp_path / "cache"
    s = run_cache(cache_config("minicpmv", maxcount=2), str(out), workers=0, progress=False,
                  dataset_factory=FakeDataset.factory([video_sample(k, 2, fmt="minicpmv") for k in KEYS]))
    assert s["finalized"] and s["shards"] == 2
    return out


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_verify_and_the_adapters_refuse_a_hostile_member(cache, tmp_path, kind):
    name = rewrite_shard(cache, kind)
    files_before = everything_under(tmp_path)
    report = verify(str(cache))
    assert not report.ok
    assert any(name in p and REASONS[kind] in p and "refused" in p for p in report.problems), str(report)

    ds = MiniCPMVShards(str(cache))  # counts from wids.json: no shard is opened yet
    with pytest.raises(UnsafeShard, match=REASONS[kind]):
        ds[0]
    assert ds[2]["key"] == KEYS[2]  # the other shard is fine
    with pytest.raises(UnsafeShard, match=REASONS[kind]):
        Idefics3Dataset(str(cache))[1]
    with pytest.raises(UnsafeShard, match=REASONS[kind]):  # a bare list of tars is counted from the headers
        MiniCPMVShards([str(cache / name)])
    assert everything_under(tmp_path) == files_before  # nothing extracted, nothing written
    assert not os.path.exists("/tmp/mmstream-escape.json") and not (tmp_path / "escape.json").exists()


@pytest.mark.parametrize("kind", ["climb", "absolute", "symlink", "chardev", "fifo", "huge"])
def test_the_stream_skips_hostile_members_and_counts_them(cache, kind, caplog):
    rewrite_shard(cache, kind)
    stream = MiniCPMVShardStream(str(cache))
    keys = [item["key"] for item in stream]
    assert keys == KEYS  # every real sample, the hostile member never among them
    if kind in ("climb", "absolute"):
        assert stream.skipped == 1 and any("unsafe names skipped" in r.getMessage() for r in caplog.records)
    if kind == "huge":
        assert any("unexpected end of data" in r.getMessage() for r in caplog.records)


def test_a_files_part_naming_a_path_outside_is_refused(tmp_path):
    out = tmp_path / "files"
    run_cache(cache_config("minicpmv", layout="files", maxcount=2), str(out), workers=0, progress=False,
              dataset_factory=FakeDataset.factory([video_sample(k, 2, fmt="minicpmv") for k in KEYS]))
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][0]
    records = json.loads((out / entry["name"]).read_text())
    records[0]["image"]["<image_00>"] = "../../../etc/hostname"
    data = json.dumps(records).encode()
    (out / entry["name"]).write_bytes(data)
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify(str(out))
    assert any("etc/hostname" in p and "climbs out" in p for p in report.problems), str(report)


@pytest.mark.parametrize("name, kind, end, problem", [
    ("k.json", tarfile.REGTYPE, 600, None),
    ("a/k.00000.jpg", tarfile.AREGTYPE, 1024, None),
    ("k.json", tarfile.REGTYPE, 1025, "past the 1024 bytes"),
    ("../k.json", tarfile.REGTYPE, 600, "climbs out"),
    ("a/../../k.json", tarfile.REGTYPE, 600, "climbs out"),
    ("/k.json", tarfile.REGTYPE, 600, "absolute"),
    ("C:/k.json", tarfile.REGTYPE, 600, "absolute"),
    ("", tarfile.REGTYPE, 600, "empty"),
    ("k.lnk", tarfile.SYMTYPE, 512, "symbolic link"),
    ("k.lnk", tarfile.LNKTYPE, 512, "hard link"),
    ("k.dev", tarfile.BLKTYPE, 512, "block device"),
    ("k.sparse", tarfile.GNUTYPE_SPARSE, 600, "sparse"),
    ("k.x", b"Q", 600, "tar type"),
])
def test_member_rules(name, kind, end, problem):
    got = member_problem(name, kind, end, 1024, "the file holds")
    assert (got is None) if problem is None else (problem in got)


def test_the_cache_as_written_passes_the_scanner(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    for s in manifest["shards"]:
        assert shard_keys(cache / s["name"], limit=s["bytes"]) == s["keys"]
    assert name_problem("src-00000000.00000.jpg") is None and MAX_HEADER_BYTES >= 1 << 16
