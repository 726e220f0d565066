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
