"""The examples run on the demo data (what `make demo` builds)."""
import json
import os
import subprocess
import sys

import pytest

from mmstream.demo import build_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    return build_demo_data(str(tmp_path_factory.mktemp("demo")))


def run(*args):
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_train_loop_resumes_with_exactly_the_unseen_samples(demo_config, tmp_path):
    ckpt, seen = str(tmp_path / "ckpt.pt"), str(tmp_path / "seen.jsonl")
    common = ["examples/train_loop.py", demo_config, "--epochs", "1", "--checkpoint", ckpt, "--seen-log", seen,
              "--workers", "2", "--batch-size", "2"]
    out = run(*common, "--steps", "3")
    assert "saved" in out
    out = run(*common, "--steps", "1000", "--resume")
    assert "resumed at step 3" in out
    keys = [k for line in open(seen) for k in json.loads(line)["keys"]]
    manifest = json.load(open(os.path.join(os.path.dirname(demo_config), "demo_manifest.json")))
    expected = sum(manifest["records"].values()) - sum(
        n for per in manifest["expected_drops"].values() for n in per.values())
    assert len(keys) == len(set(keys)), "a sample was trained twice"
    assert len(keys) == expected, "a sample was never trained"


def test_cache_then_finetune_script(demo_config, tmp_path):
    out = tmp_path / "cache"
    env = dict(os.environ, MMSTREAM=f"{sys.executable} -m mmstream", PY=sys.executable)
    res = subprocess.run(["bash", "examples/cache_then_finetune.sh", demo_config, str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"--data_path {out}/data.json" in res.stdout and "torchrun" in res.stdout
    records = json.load(open(out / "data.json"))
    assert records and all(os.path.isfile(p) for r in records for p in r["image"].values())


def test_train_qwen2vl_loss_falls_and_a_resumed_run_repeats_the_uninterrupted_one(demo_config, tmp_path):
    """The tiny Qwen2-VL on the demo data: model-ready batches from 2 workers, the loss falls on
    the small fixed set, and a run resumed from the step-8 checkpoint logs exactly what the
    uninterrupted run logged after step 8 (keys, losses, drops)."""
    ckpt, full, resumed = str(tmp_path / "q.pt"), str(tmp_path / "full.jsonl"), str(tmp_path / "resumed.jsonl")
    common = ["examples/train_qwen2vl.py", demo_config, "--steps", "16", "--workers", "2", "--lr", "3e-3"]
    out = run(*common, "--checkpoint", ckpt, "--save-at", "8", "--log", full)
    assert f"saved {ckpt}.step8 at step 8" in out
    out = run(*common, "--checkpoint", ckpt + ".step8", "--resume", "--log", resumed)
    assert "resumed at step 8" in out
    a = [json.loads(line) for line in open(full)]
    b = [json.loads(line) for line in open(resumed)]
    assert [r["step"] for r in a] == list(range(1, 17)) and [r["step"] for r in b] == list(range(9, 17))
    for x, y in zip(a[8:], b):
        assert (x["keys"], x["dropped"], x["epoch"]) == (y["keys"], y["dropped"], y["epoch"])
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
    epochs = {}
    for r in a:
        epochs.setdefault(r["epoch"], []).append(r["loss"])
    first, last = (sum(v) / len(v) for v in (epochs[min(epochs)], epochs[max(epochs)]))
    assert last < 0.9 * first  # it learns the fixed set: each epoch is the same samples (here about 5.4 -> 4.0)
    keys = {k for r in a for k in r["keys"]}
    assert {"videochatgpt-00000000", "sharegpt-00000000", "sharegpt-00000001", "synthetic-00000000"} <= keys
    assert any("too_many_frames" in r["dropped"] for r in a)  # the stream's drop reaches the loop, counted
