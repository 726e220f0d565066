"""A killed run leaves nothing behind: SIGKILL of `mmstream cache --workers 2` and of a
training loop over StatefulDataLoader(num_workers=2), mid-epoch.

Without mmstream.lifetime the cache run's workers stayed: after the parent died each
worker's exit handler joined its result queue's feeder thread, blocked writing encoded
samples (hundreds of KB each) into the full result pipe that no one reads."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_jsonl
from mmstream.synth import encode_counter_video

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def slow_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    for v in range(4):  # frames large enough that a few encoded samples fill the result pipe (64 KB)
        encode_counter_video(root / f"v{v}.mp4", num_frames=20, fps="10", size=(640, 480))
    for i in range(40):  # 40 distinct files (symlinks), so 40 decode groups
        os.symlink(root / f"v{i % 4}.mp4", root / f"link{i}.mp4")
    recs = [{"id": f"r{i}", "video": f"link{i}.mp4", "conversations": [
        {"from": "human", "value": f"<video>\nQ{i}?"}, {"from": "gpt", "value": "A"}]} for i in range(40)]
    ann = write_jsonl(root / "a.jsonl", recs)
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
           "sampling": {"fps": 4, "max_frames": 8, "decoder": "backends:SlowBackend"},
           "model": {"name": "minicpmv-2.5"}, "output": {"format": "minicpmv", "maxcount": 4}}
    path = root / "c.yaml"
    path.write_text(json.dumps(cfg))
    return root, path


def descendants(pid):
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited


def kill_mid_run(cmd, env, ready, timeout=60):
    """Start ``cmd``, wait until ``ready(proc)`` and it has 2+ worker processes, SIGKILL it,
    and return the processes of the run still alive 10 s later."""
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    kids = []
    while time.monotonic() < deadline:
        kids = descendants(proc.pid)
        if len(kids) >= 2 and ready(proc):
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run never got going")
    time.sleep(0.5)
    kids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [k for k in kids if alive(k)]
    end = time.monotonic() + 10
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [k for k in left if alive(k)]
    for k in left:  # do not leave them to the next test
        os.kill(k, signal.SIGKILL)
    new_shm = set(os.listdir("/dev/shm")) - shm_before
    if new_shm:  # another test's DataLoader may hold a segment for a moment: only ones that stay count
        time.sleep(2)
        new_shm &= set(os.listdir("/dev/shm"))
    return kids, left, new_shm


def env_for_tests():
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MMSTREAM_TEST_DECODE_SLEEP="0.5")
    return env


def test_killed_cache_run_leaves_no_worker_behind(slow_config, tmp_path):
    root, cfg = slow_config
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmstream.cli", "cache", str(cfg), "--output", str(out), "--workers", "2",
           "--no-progress"]
    ready = lambda proc: any(n.endswith(".tar") for n in os.listdir(out)) if out.exists() else False  # noqa: E731
    kids, left, shm = kill_mid_run(cmd, env_for_tests(), ready)
    assert len(kids) >= 2
    assert left == [], f"{len(left)} process(es) of the killed run still alive 10 s later"
    assert shm == set()


TRAIN = """
import sys, time
from torchdata.stateful_dataloader import StatefulDataLoader
from mmstream import StreamingDataset
from mmstream.cli.common import identity
loader = StatefulDataLoader(StreamingDataset(sys.argv[1]), batch_size=None, num_workers=2, collate_fn=identity)
for i, sample in enumerate(loader):
    print(i, sample.key, flush=True)
    time.sleep(0.2)
"""


def test_killed_training_loop_leaves_no_worker_behind(slow_config):
    root, cfg = slow_config
    seen = []

    def ready(proc):
        os.set_blocking(proc.stdout.fileno(), False)
        chunk = proc.stdout.read()
        if chunk:
            seen.append(chunk)
        return len(b"".join(seen).splitlines()) >= 3

    kids, left, shm = kill_mid_run([sys.executable, "-c", TRAIN, str(cfg)], env_for_tests(), ready)
    assert len(kids) >= 2
    assert left == [], f"{len(left)} worker(s) of the killed training loop still alive 10 s later"
    assert shm == set()
