"""filter.over_budget: a sample over max_tokens keeps the most frames, or the largest frames,
that fit: exactly, before decoding, and the largest (checked against brute force)."""
import json

import numpy as np
import pytest

from backends import LOG_ENV, decode_log
from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.budget import Budget
from mmstream.config import FilterConfig, ModelConfig
from mmstream.errors import SampleError
from mmstream.models import get_model
from mmstream.synth import encode_counter_video, read_counter
from mmstream.types import MediaPlan, Record, Turn
from tiny_tok import make_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def record():
    from mmstream.types import MediaRef

    return Record("s-00000000", "s", [Turn("user", "<video>\nwhat is the video"), Turn("assistant", "a video")],
                  [MediaRef("video", "x.mp4", "/")], meta={})


def plan(n, w=640, h=360):
    return MediaPlan("video", "/x.mp4", w, h, list(range(0, 2 * n, 2)), [i * 0.5 for i in range(n)], 1.0)


def budget(tok, name, max_tokens, rule):
    model = get_model(ModelConfig(name=name, tokenizer=tok))
    return model, Budget(model, FilterConfig(max_tokens=max_tokens, over_budget=rule))


def total(model, rec, plans):
    return model.count_tokens(rec, model.format_plans(rec, plans), [
        __import__("mmstream.models.base", fromlist=["MediaShape"]).MediaShape(p.kind, p.num_frames, p.width, p.height)
        for p in plans])["total"]


@pytest.mark.parametrize("name,n,limit", [("minicpmv-2.5", 24, 1000), ("minicpmv-2.5", 24, 100), ("qwen2-vl", 16, 1500),
                                          ("qwen2-vl", 30, 700), ("idefics3", 10, 900)])
def test_fewer_frames_is_the_largest_count_that_fits(tok, name, n, limit):
    model, b = budget(tok, name, limit, "fewer_frames")
    rec = record()
    full = [plan(n)]
    if total(model, rec, full) <= limit:
        pytest.skip("not over budget")
    # brute force: every frame count the model accepts, largest first
    best = None
    for k in range(n - 1, 0, -1):
        if model.frame_count_rule(k) != k:
            continue
        if total(model, rec, [plan(k)]) <= limit:
            best = k
            break
    if best is None:
        with pytest.raises(SampleError) as err:
            b.estimate(rec, full)
        assert err.value.reason == "too_many_tokens"
        return
    est = b.estimate(rec, full)
    got = est.plans[0]
    assert got.num_frames == best and est.tokens["total"] <= limit
    assert est.fitted["rule"] == "fewer_frames" and est.fitted["media"][0]["frames"] == [n, best]
    # the kept frames are spread evenly over the planned ones, first and last included
    assert got.indices[0] == full[0].indices[0] and got.indices[-1] == full[0].indices[-1]
    gaps = np.diff(got.indices)
    assert gaps.max() - gaps.min() <= 2
    assert got.fps == pytest.approx(best / n)


@pytest.mark.parametrize("limit", [2000, 800, 300])
def test_smaller_frames_is_the_largest_size_that_fits(tok, limit):
    model, b = budget(tok, "qwen2-vl", limit, "smaller_frames")
    rec = record()
    full = [plan(8, 1280, 720)]
    assert total(model, rec, full) > limit
    best = None
    for long_side in range(1280 - 28, 27, -28):  # the model's resize step
        w, h = long_side, int(round(720 * long_side / 1280 / 2)) * 2
        if total(model, rec, [plan(8, w, h)]) <= limit:
            best = (w, h)
            break
    if best is None:  # the video limits' floor (128 x 28 x 28 px a frame) is over the budget already
        with pytest.raises(SampleError, match="no smaller frames fit"):
            b.estimate(rec, full)
        return
    est = b.estimate(rec, full)
    assert (est.plans[0].width, est.plans[0].height) == best
    assert est.plans[0].num_frames == 8 and est.tokens["total"] <= limit


def test_drop_stays_the_default(tok):
    model, b = budget(tok, "qwen2-vl", 300, "drop")
    with pytest.raises(SampleError) as err:
        b.estimate(record(), [plan(16)])
    assert err.value.reason == "too_many_tokens"
    assert FilterConfig().over_budget == "drop"


def test_through_the_stream_one_decode_for_fitted_and_unfitted_records(tmp_path, tok, monkeypatch):
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    encode_counter_video(tmp_path / "v.mp4", num_frames=40, fps="10", size=(128, 96))
    short, long = "what is it", " ".join(["what is the video"] * 40)
    recs = [{"id": f"r{i}", "video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\n" + q},
                                                              {"from": "gpt", "value": "a video"}]}
            for i, q in enumerate([short, long])]
    ann = write_jsonl(tmp_path / "a.jsonl", recs)
    base = {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
            "sampling": {"fps": 2, "max_frames": None, "decoder": "backends:CountingBackend"},
            "model": {"name": "minicpmv-2.5", "tokenizer": tok}, "loader": {"shuffle": False}}
    m = get_model(ModelConfig(name="minicpmv-2.5", tokenizer=tok))
    text_short = m.t2vid_text_tokens(Record("k", "s", [Turn("user", "<video>\n" + short), Turn("assistant", "a video")],
                                            []))  # text tokens need no media
    limit = text_short + 8 * 96  # the short question fits all 8 frames; the long one needs fewer
    cfg = dict(base, filter={"max_tokens": limit, "over_budget": "fewer_frames"})
    out = {s.record.id: s for s in StreamingDataset(cfg)}
    assert out["r0"].clips[0].num_frames == 8 and out["r0"].fitted is None
    fitted = out["r1"]
    assert fitted.fitted is not None and fitted.tokens["total"] <= limit
    k = fitted.clips[0].num_frames
    assert 0 < k < 8 and fitted.fitted["media"][0]["frames"] == [8, k]
    full = [read_counter(f) for f in out["r0"].clips[0].frames]
    got = [read_counter(f) for f in fitted.clips[0].frames]
    assert set(got) <= set(full) and got[0] == full[0] and got[-1] == full[-1]
    assert len(fitted.model_record["image"]) == k  # the record names the frames it has
    assert len(decode_log(log)) == 1  # one decode for both records
    # inspect shows it and counts it
    from mmstream.cli import main

    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(cfg))
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["inspect", str(cfg_path), "--jsonl"]) == 0
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines[-1]["summary"]["fitted"] == 1
    assert [x.get("fitted") for x in lines[:-1] if "key" in x].count(None) == 1
