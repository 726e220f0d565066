"""Smoke test of `mmstream bench` and the baseline scripts on tiny clips: every JSON
field is there and the numbers are sane. No timing is asserted (benchmarks/ measures)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import requires_ffmpeg
from mmstream.benchmark import RESULT_FIELDS, plot_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import make_data
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("bench")
    manifest = make_data.build(str(out), quick=True, verbose=False)
    return out, manifest


def run_json(*args):
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def check_result(r, samples):
    assert set(RESULT_FIELDS) <= set(r)
    assert r["samples"] == samples and r["frames"] >= samples and r["dropped"] == 0
    assert r["wall_s"] > 0 and r["samples_per_s"] > 0 and r["frames_per_s"] > 0
    assert r["video_seconds"] > 0 and r["video_s_per_s"] > 0
    assert r["samples_per_s"] == pytest.approx(r["samples"] / r["wall_s"], rel=0.01)
    assert all(v >= 0 for v in r["stages_s"].values()) and set(r["stages_s"]) >= {"read", "decode", "write"}
    assert r["peak_rss_mb"] and all(100 < p < 4000 for p in r["peak_rss_mb"])
    assert r["cpu_s"] > 0


@requires_ffmpeg
def test_mmstream_bench_json_fields(quick_data):
    out, manifest = quick_data
    r = run_json("-m", "mmstream.cli", "bench", str(out / "epoch.yaml"), "--workers", "1", "--samples", "3", "--json")
    check_result(r, 3)
    assert r["name"] == "stream" and r["workers"] == 1 and r["bytes_written"] == 0
    assert r["stages_s"]["decode"] > 0 and r["stages_s"]["probe"] > 0 and r["stages_s"]["convert"] > 0
    assert len(r["peak_rss_mb"]) == 1 and r["peak_rss_mb"][0] >= r["start_rss_mb"][0]
    assert r["decoder"] == "auto(pyav)" and "cpu" in r["machine"]


@requires_ffmpeg
def test_baselines_print_the_same_fields(quick_data):
    out, manifest = quick_data
    n = manifest["records"]["epoch"]
    for script in ("decode_only.py", "per_sample_full_read.py"):
        r = run_json(os.path.join("benchmarks", script), str(out / "epoch.yaml"), "--workers", "1", "--json")
        check_result(r, n)
    r = run_json(os.path.join("benchmarks", "extract_then_load.py"), str(out / "epoch.yaml"), "--workers", "1", "--json")
    check_result(r, n)
    assert r["bytes_written"] > 0 and r["pngs_written"] > 0
    assert set(r["phases_s"]) == {"extract", "reformat", "load_epoch"}


@requires_ffmpeg
def test_sparse_seek_and_sequential_plans_agree(quick_data):
    out, manifest = quick_data
    clip = next(n for n, c in manifest["clips"].items() if "sparse" in c["roles"])
    args = [os.path.join("benchmarks", "decode_only.py"), "-", "--video", str(out / "videos" / clip),
            "--max-frames", "24", "--json"]
    seek, seq = run_json(*args), run_json(*args, "--plan", "sequential")
    assert seek["frames"] == seq["frames"] == 24
    assert seek["frames_sha1"] == seq["frames_sha1"] and seek["source_indices"] == seq["source_indices"]


def test_plot_is_a_png(tmp_path):
    from PIL import Image

    path = plot_lines(str(tmp_path / "p.png"), {"a": [(1, 1.0), (2, 1.9)], "b": [(1, 1.2), (2, 2.2)]},
                      title="t", hlines={"c": 0.5})
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 560)


@requires_ffmpeg
def test_qa_set_decodes_each_video_once(quick_data):
    out, manifest = quick_data
    videos = sum("epoch" in c["roles"] for c in manifest["clips"].values())
    assert manifest["records"]["qa_k4"] == 4 * videos
    r = run_json("-m", "mmstream.cli", "bench", str(out / "qa_k4.yaml"), "--workers", "2", "--json")
    check_result(r, 4 * videos)
    assert r["decodes"] == videos and r["records_per_decode"] == 4
    assert len(r["mix_peak_mb"]) == 2 and max(r["mix_peak_mb"]) > 0
    # a video's records are not side by side in the file
    with open(out / "annotations" / "qa_k4.jsonl") as f:
        videos_in_order = [json.loads(line)["video"] for line in f]
    assert sum(a == b for a, b in zip(videos_in_order, videos_in_order[1:])) < len(videos_in_order) // 4


def test_index_memory_script(tmp_path):
    r = run_json(os.path.join("benchmarks", "index_memory.py"), "--records", "3000", "--videos", "400",
                 "--data", str(tmp_path), "--repeat", "1", "--ranks", "2", "--json")
    assert r["records"] == 3000 and r["groups"] == 400 and sum(r["worker_records"]) == 3000
    assert 0 < r["index_mb"] < 1 and all(m < 50 for m in r["worker_index_mb"])
    assert r["cold_s"] > 0 and r["warm_s"] > 0 and r["ranks_warm_s"] > 0
    assert r["ranks_cold_builds"] == [1]  # two ranks starting together: one builds, the other waits
    assert len(r["worker_index_pss_mb"]) == len(r["worker_index_uss_mb"]) == 2


@requires_ffmpeg
def test_cost_fit_script(quick_data):
    out, manifest = quick_data
    r = run_json(os.path.join("benchmarks", "cost_fit.py"), str(out), "--repeat", "1", "--json")
    for sampling in ("capped", "dense"):
        got = r[sampling]
        assert set(got["measured_cpu_s"]) == set(r["videos"]) and all(v > 0 for v in got["measured_cpu_s"].values())
        assert all(v > 0 for v in got["model_s"].values())
        for split in got["split_max_over_mean"].values():
            assert set(split) == {"model", "sqrt_bytes", "bytes", "count"} and all(v >= 1 for v in split.values())


@requires_ffmpeg
def test_adapter_bench_reports_both_rates_and_the_processor_cost(quick_data):
    out, _ = quick_data
    res = subprocess.run([sys.executable, os.path.join("benchmarks", "adapter_bench.py"), str(out / "epoch.yaml"),
                          "--families", "qwen2.5-vl,idefics3", "--workers", "1", "--samples", "2", "--repeat", "1",
                          "--to-model", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r, idefics3 = json.loads(res.stdout)["results"]
    assert idefics3["family"] == "idefics3" and idefics3["with"]["samples"] == 2 and idefics3["with"]["dropped"] == {}
    assert idefics3["adapter_ms_per_sample"] > 0
    assert r["family"] == "qwen2.5-vl" and r["to_model"] and r["without"]["samples"] == r["with"]["samples"] == 2
    assert r["without"]["dropped"] == r["with"]["dropped"] == {}  # every count agreed with the processor
    assert r["without"]["samples_per_s"] > 0 and r["with"]["samples_per_s"] > 0 and r["rate_ratio"] > 0
    assert r["adapter_ms_per_sample"] > 0 and r["adapter_cpu_ms_per_sample"] > 0 and r["decode_ms_per_sample"] > 0
    assert r["without"]["adapter_s"] == 0 and r["with"]["stages_s"]["decode"] > 0


def test_resume_bench_small(tmp_path):
    r = run_json(os.path.join("benchmarks", "resume_bench.py"), "--gb", "0.01", "--shard-mb", "2", "--repeat", "1",
                 "--out", str(tmp_path / "cache"), "--json")
    assert r["shards"] >= 4 and r["bytes"] > 0.009 * (1 << 30)
    assert set(r["median_s"]) == {"resume_check", "read_once", "sha256_one_thread"}
    assert all(v > 0 for v in r["median_s"].values()) and r["check_vs_read_once"] > 0
    assert not (tmp_path / "cache").exists()


def test_cache_bench_writer_only(tmp_path):
    r = run_json(os.path.join("benchmarks", "cache_bench.py"), "--writer-only", "--writer-samples", "5",
                 "--repeat", "1", "--tree", f"a={ROOT}", "--tree", f"b={ROOT}", "--json")
    assert r["same_shard_bytes"] and set(r["median_s"]) == {"a", "b"}
    assert r["median_s"]["a"]["writer"] > 0 and r["median_s"]["a"]["cache"] is None


@requires_ffmpeg
def test_decode_limit_script(quick_data):
    """decode_limit.py on the quick clips: a row per clip and workload, mmstream decoding
    exactly the frames the limit counts (no timing asserted)."""
    out, manifest = quick_data
    clips = [n for n, c in manifest["clips"].items() if "limit" in c["roles"]]
    r = run_json(os.path.join("benchmarks", "decode_limit.py"), str(out), "--workloads", "t2vid,qa", "--ks", "1,2",
                 "--repeat", "1", "--json")
    assert [(row["clip"], row["workload"]) for row in r["rows"]] == [(c, w) for c in clips
                                                                     for w in ("t2vid", "qa_k1", "qa_k2")]
    for row in r["rows"]:
        assert 0 < row["targets"] <= row["needed_frames"] <= row["up_to_last_target"] <= row["stream_frames"]
        assert row["mmstream_decoded_frames"] <= row["needed_frames"]
        if row["codec"] == "h264":
            assert row["mmstream_decoded_frames"] == row["needed_frames"]
        assert row["limit"]["cpu_s"] > 0 and row["mmstream"]["cpu_s"] > 0 and row["ratio_cpu"] > 0
