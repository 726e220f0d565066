"""`mmstream cache` end to end on real decoded videos: kill -9 and resume, two ranks vs one."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from mmstream import synth
from mmstream.sinks import finalize, run_cache, verify
from mmstream.sinks.manifest import RankManifest

N_RECORDS = 12
MISSING = 5  # this record's video does not exist: one drop
CHILD_DELAY_S = 0.3  # per record in the run that gets killed, so the kill lands mid-way

# The run to kill: the real StreamingDataset, slowed down, in a process of its own.
CHILD = """
import sys, time
from mmstream import StreamingDataset
from mmstream.sinks import run_cache

class Slow:
    def __init__(self, dataset):
        self.dataset = dataset
    def __iter__(self):
        for item in self.dataset:
            time.sleep(float(sys.argv[3]))
            yield item

run_cache(sys.argv[1], sys.argv[2], workers=1, progress=False,
          dataset_factory=lambda config, **kw: Slow(StreamingDataset(config, **kw)))
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    media = root / "media"
    media.mkdir()
    records = []
    for i in range(N_RECORDS):
        if i != MISSING:
            synth.encode_counter_video(str(media / f"v{i}.mp4"), num_frames=8, fps="4", size=(64, 48))
        records.append({"id": f"r{i}", "video": f"v{i}.mp4",
                        "conversations": [{"from": "human", "value": "<video>\nWhich number?"},
                                          {"from": "gpt", "value": str(i)}]})
    (media / "ann.json").write_text(json.dumps(records))
    config = {"sources": [{"name": "vid", "annotations": "media/ann.json", "format": "llava"}],
              "sampling": {"fps": 2, "max_frames": 4},
              "model": {"name": "qwen2-vl"},
              "output": {"format": "megatron", "maxcount": 2}}
    path = root / "cache.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory):
    """One uninterrupted run, world size 1: the keys every other run must match."""
    out = tmp_path_factory.mktemp("ref")
    s = run_cache(config_path, str(out), workers=2, rank=0, world_size=1, progress=False)
    assert s["finalized"] and s["dropped"] == {"missing_media": 1}
    return out, kept_keys(out)


def kept_keys(out) -> list[str]:
    m = json.loads((out / "manifest.json").read_text())
    return [k for s in m["shards"] for k in s["keys"]]


def test_reference_run_keeps_every_record_but_the_missing_one(reference):
    out, keys = reference
    assert sorted(keys) == [f"vid-{i:08d}" for i in range(N_RECORDS) if i != MISSING]
    assert verify(str(out)).ok


def test_kill_9_mid_run_then_rerun_gives_every_key_exactly_once(config_path, reference, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, RANK="0", WORLD_SIZE="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, config_path, str(out), str(CHILD_DELAY_S)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            m = RankManifest.load(str(out), 0) if (out / "manifest.rank-0.json").exists() else None
            if m is not None and len(m.shards) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only: its DataLoader worker outlives it a while
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        killed = RankManifest.load(str(out), 0)
        _check_after_kill_and_resume(out, killed, config_path, reference)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the killed run's process group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _check_after_kill_and_resume(out, killed, config_path, reference):
    assert not killed.complete and 1 <= len(killed.shards) < 6

    # what a reader sees now: only complete shards (temporary files are not *.tar)
    for path in glob.glob(str(out / "*.tar")):
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) % 3 == 0
    assert not (out / "manifest.json").exists()

    s = run_cache(config_path, str(out), workers=2, rank=0, world_size=1, progress=False)
    assert s["resumed"] and s["finalized"]
    assert not glob.glob(str(out / "*.tmp-*"))
    keys = kept_keys(out)
    assert len(keys) == len(set(keys))                       # exactly once
    assert sorted(keys) == sorted(reference[1])               # and every one
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["dropped"] == {"missing_media": 1}
    names = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.tar")))
    assert names == sorted(sh["name"] for sh in m["shards"])  # no unlisted shard left
    assert verify(str(out)).ok

    shard = out / m["shards"][-1]["name"]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0x01
    shard.write_bytes(bytes(data))
    assert not verify(str(out)).ok


def test_world_size_two_then_finalize_equals_world_size_one(config_path, reference, tmp_path):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset
    from megatron.energon.errors import reraise_exception

    from training_adapters.megatron import ChatMLTaskEncoder

    out = tmp_path / "two"
    for rank in (0, 1):
        s = run_cache(config_path, str(out), workers=1, rank=rank, world_size=2, progress=False, finalize=False)
        assert s["world_size"] == 2 and not s["finalized"]
    m = finalize(str(out))
    keys = kept_keys(out)
    assert sorted(keys) == sorted(reference[1]) and len(keys) == len(set(keys))
    assert m["counts"]["dropped"] == {"missing_media": 1}
    assert {sh["rank"] for sh in m["shards"]} == {0, 1}
    assert verify(str(out)).ok

    wc = WorkerConfig(rank=0, world_size=1, num_workers=0, global_error_handler=reraise_exception)
    ds = get_train_dataset(str(out), worker_config=wc, batch_size=None, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, task_encoder=ChatMLTaskEncoder(), repeat=False)
    samples = list(get_loader(ds))
    assert sorted(s.__key__ for s in samples) == sorted(reference[1])
    for s in samples:
        assert len(s.videos) == 1 and s.videos[0].shape[0] % 2 == 0 and s.videos[0].shape[1] == 3
        assert len(s.second_per_grid_ts) == 1 and s.second_per_grid_ts[0] > 0


def test_cli_has_cache_finalize_verify(reference, capsys):
    from mmstream.cli import COMMANDS, main

    assert {"cache", "finalize", "verify"} <= set(COMMANDS), "add cache/finalize/verify to mmstream.cli.COMMANDS"
    out = reference[0]
    assert main(["verify", str(out)]) == 0
    assert main(["finalize", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


# `mmstream cache --engine ray` where Ray cannot be imported: a finder that hides it
NO_RAY = """
import sys

class HideRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, HideRay())
from mmstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_ray_engine_without_ray_is_one_line_naming_the_install(tmp_path, text_config):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(text_config, model={"name": "minicpmv-2.5"})))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", NO_RAY, "cache", str(cfg), "--output", str(out), "--engine", "ray"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["mmstream cache: error: --engine ray needs Ray: "
                                               "pip install 'mmstream[ray]'"]
    assert not out.exists()  # said at once, before anything was read or written
