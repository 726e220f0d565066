"""Supervised decoding: a hang (in Python or in C with the GIL held), a segfault, a FIFO,
damaged and odd files each end as a counted drop or a clean sample within the limit,
and the run goes on with every good sample."""
import os
import shutil
import subprocess
import time

import pytest
from torch.utils.data import DataLoader

from backends import LOG_ENV
from conftest import requires_ffmpeg, write_jsonl
from mmstream import StreamingDataset
from mmstream.cli.common import identity
from mmstream.errors import SampleError
from mmstream.sinks import run_cache
from mmstream.synth import encode_counter_video, read_counter
from mmstream.types import Drop, Sample

LIMIT = 3.0


def record(i, video):
    return {"id": f"r{i}", "video": video, "conversations": [
        {"from": "human", "value": "<video>\nWhich frame?"}, {"from": "gpt", "value": str(i)}]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    good = [encode_counter_video(root / f"good{i}.mp4", num_frames=12, fps="6", size=(96, 72)) for i in range(3)]
    data = open(good[0], "rb").read()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    os.mkfifo(root / "fifo.mp4")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac",
                        str(root / "audio_only.mp4")], check=True)
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=7680x4320:rate=2",
                        "-frames:v", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                        str(root / "clip_8k.mp4")], check=True)
    plain = [record(i, f"good{i}.mp4") for i in range(3)] + [
        record(10, "truncated.mp4"), record(11, "fifo.mp4"), record(12, "audio_only.mp4"), record(13, "clip_8k.mp4")]
    sources = {"plain": plain, "hang": [record(20, "good0.mp4")], "native_hang": [record(21, "good1.mp4")],
               "segfault": [record(22, "good2.mp4")]}
    decoder = {"plain": "auto", "hang": "backends:HangBackend", "native_hang": "backends:NativeHangBackend",
               "segfault": "backends:SegfaultBackend"}
    config = {"sources": [{"name": name, "format": "llava", "annotations": write_jsonl(root / f"{name}.jsonl", recs),
                           "media_root": str(root), "sampling": {"decoder": decoder[name]}}
                          for name, recs in sources.items()],
              "sampling": {"fps": 2, "max_frames": 4, "decode_timeout": LIMIT},
              "loader": {"shuffle": False}, "model": {"name": "minicpmv-2.5"},
              "output": {"format": "minicpmv", "maxcount": 2}}
    return root, config


EXPECTED = {"plain-00000003": "decode_error", "plain-00000004": "not_a_file", "plain-00000005": "no_frames",
            "hang-00000000": "decode_timeout", "native_hang-00000000": "decode_timeout",
            "segfault-00000000": "decoder_crashed"}
GOOD = {"plain-00000000", "plain-00000001", "plain-00000002", "plain-00000006"}  # the 8K clip decodes cleanly


@requires_ffmpeg
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_faults_end_as_counted_drops_and_every_good_sample_comes(corpus, workers):
    root, config = corpus
    t0 = time.monotonic()
    items = list(DataLoader(StreamingDataset(config, emit_drops=True), batch_size=None, num_workers=workers,
                            collate_fn=identity))
    elapsed = time.monotonic() - t0
    got = {i.key: (i.reason if isinstance(i, Drop) else "kept") for i in items}
    assert got == {**EXPECTED, **{k: "kept" for k in GOOD}}
    samples = {i.key: i for i in items if isinstance(i, Sample)}
    assert [read_counter(f) for f in samples["plain-00000000"].clips[0].frames] == [1, 4, 7, 10]
    assert samples["plain-00000006"].clips[0].frames.shape[1:] == (4320, 7680, 3)
    hangs = 2
    assert elapsed < hangs * (LIMIT + 30), f"{elapsed:.0f} s"
    for key in ("hang-00000000", "native_hang-00000000", "segfault-00000000"):
        drop = next(i for i in items if i.key == key)
        assert drop.path and drop.path.endswith(".mp4")


@requires_ffmpeg
def test_cache_run_survives_the_same_faults(corpus, tmp_path):
    root, config = corpus
    s = run_cache(config, str(tmp_path / "out"), workers=2, progress=False)
    assert s["kept"] == len(GOOD) and s["finalized"]
    reasons = {}
    for r in EXPECTED.values():
        reasons[r] = reasons.get(r, 0) + 1
    assert s["dropped"] == reasons


def test_strict_mode_raises_naming_key_and_path(corpus):
    root, config = corpus
    strict = dict(config, strict=True, sources=[src for src in config["sources"] if src["name"] == "segfault"])
    with pytest.raises(SampleError) as err:
        list(StreamingDataset(strict))
    assert err.value.reason == "decoder_crashed" and err.value.key == "segfault-00000000"
    assert err.value.path.endswith("good2.mp4") and "SIGSEGV" in str(err.value)


def test_decoder_helper_is_recycled_above_its_rss_limit(tmp_path, monkeypatch):
    log = tmp_path / "pids.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    for i in range(4):
        encode_counter_video(tmp_path / f"v{i}.mp4", num_frames=6, fps="6", size=(64, 48))
    ann = write_jsonl(tmp_path / "a.jsonl", [record(i, f"v{i}.mp4") for i in range(4)])
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
           "sampling": {"fps": 2, "decoder": "backends:LeakyBackend", "decoder_max_rss_mb": 100}}
    ds = StreamingDataset(cfg)
    assert len(list(ds)) == 4
    pids = [line.split("\t")[1] for line in log.read_text().splitlines()]
    assert len(pids) == 4 and len(set(pids)) == 4  # each decode leaked 64 MB: a fresh helper each time
    assert os.getpid() not in map(int, pids)
    assert ds.stats["decoder_recycled"] >= 3


def test_without_a_limit_decoding_stays_in_the_worker(tmp_path, monkeypatch):
    log = tmp_path / "pids.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    encode_counter_video(tmp_path / "v.mp4", num_frames=6, fps="6", size=(64, 48))
    ann = write_jsonl(tmp_path / "a.jsonl", [record(0, "v.mp4")])
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
           "sampling": {"fps": 2, "decoder": "backends:LeakyBackend", "decode_timeout": None}}
    assert len(list(StreamingDataset(cfg))) == 1
    assert log.read_text().split("\t")[1].strip() == str(os.getpid())


def test_supervised_frames_equal_in_worker_frames(corpus):
    root, config = corpus
    plain = dict(config, sources=[dict(config["sources"][0], annotations=write_jsonl(
        root / "two.jsonl", [record(0, "good0.mp4"), record(1, "good1.mp4")]))])
    off = dict(plain, sampling=dict(plain["sampling"], decode_timeout=None))
    for workers in (0, 2):
        a = {s.key: s for s in DataLoader(StreamingDataset(plain), batch_size=None, num_workers=workers,
                                          collate_fn=identity)}
        b = {s.key: s for s in DataLoader(StreamingDataset(off), batch_size=None, num_workers=workers,
                                          collate_fn=identity)}
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k].clips[0].frames == b[k].clips[0].frames).all()
            assert a[k].clips[0].frames.flags.writeable
            assert list(a[k].clips[0].timestamps) == list(b[k].clips[0].timestamps)


def test_the_helper_is_forked_only_after_what_it_imports_is_imported():
    """A fork copies the import lock of a module another thread is importing at that moment,
    and the helper's own import of that module then waits forever (the demo's first image
    timed out about one run in 15: a worker's main thread was loading PIL's JPEG plugin while
    its prefetching thread forked the helper). The parent imports the helper's modules and
    PIL's format plugins before forking, so nothing is left to import mid-way."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        from mmstream.media.supervise import HELPER_MODULES, Supervised
        from PIL import Image
        assert Image._initialized < 2, "PIL's plugins loaded before the test"
        s = Supervised()
        s._helper()
        try:
            assert Image._initialized == 2, Image._initialized
            assert "PIL.JpegImagePlugin" in sys.modules and all(m in sys.modules for m in HELPER_MODULES)
        finally:
            s.close()
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
