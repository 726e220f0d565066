"""Decode once per video: records sharing a video form a group, planned and decoded once,
split exactly once over ranks x workers, mixed after decoding, resumable."""
import json
import random

import numpy as np
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from backends import LOG_ENV, decode_log
from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.cli.common import identity
from mmstream.synth import encode_counter_video, read_counter
from mmstream.types import Drop, Sample

VIDEOS = 5
PER_VIDEO = [1, 2, 3, 4, 6]  # records per video
TEXT_ONLY = 3


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    """5 counter videos with 1..6 questions each, scattered over the file, plus text-only
    records and two records of a missing video."""
    root = tmp_path_factory.mktemp("qa")
    (root / "videos").mkdir()
    for v in range(VIDEOS):
        encode_counter_video(root / "videos" / f"v{v}.mp4", num_frames=20, fps="10", size=(96, 72))
    records = []
    for v, k in enumerate(PER_VIDEO):
        for q in range(k):
            records.append({"id": f"v{v}_q{q}", "video": f"videos/v{v}.mp4",
                            "conversations": [{"from": "human", "value": f"<video>\nQuestion {q} about {v}?"},
                                              {"from": "gpt", "value": f"Answer {q}."}]})
    for t in range(TEXT_ONLY):
        records.append({"id": f"t{t}", "conversations": [{"from": "human", "value": f"hi {t}"},
                                                          {"from": "gpt", "value": "hello"}]})
    for q in range(2):
        records.append({"id": f"gone_q{q}", "video": "videos/gone.mp4",
                        "conversations": [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    random.Random(7).shuffle(records)  # a video's records are anywhere in the file
    ann = write_jsonl(root / "qa.jsonl", records)
    return {"root": root, "annotations": ann, "records": records}


def config(qa, **loader):
    return {"sources": [{"name": "qa", "format": "llava", "annotations": qa["annotations"]}],
            "sampling": {"fps": 2, "max_frames": 4, "decoder": "backends:CountingBackend"},
            "loader": {"seed": 1, **loader}}


@pytest.fixture
def decodes(tmp_path, monkeypatch):
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    return lambda: decode_log(log)


def all_keys(qa):
    return {f"qa-{i:08d}" for i in range(len(qa["records"]))}


def run(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=identity)
    return list(loader)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_every_record_exactly_once_and_each_video_decoded_once(qa, decodes, world, workers):
    got = []
    for rank in range(world):
        got += run(StreamingDataset(config(qa), rank=rank, world_size=world, emit_drops=True), workers)
    keys = [i.key for i in got]
    assert len(keys) == len(set(keys)) == len(qa["records"]), "a record was lost or yielded twice"
    assert set(keys) == all_keys(qa)
    drops = [i for i in got if isinstance(i, Drop)]
    assert [d.reason for d in drops] == ["missing_media"] * 2
    # one decode per distinct video, however many records use it
    assert sorted(decodes()) == sorted(str(qa["root"] / "videos" / f"v{v}.mp4") for v in range(VIDEOS))


def test_a_groups_samples_share_one_clip_and_keep_their_own_record(qa, decodes):
    samples = [s for s in StreamingDataset(config(qa)) if s.record.media]
    by_video = {}
    for s in samples:
        by_video.setdefault(s.record.media[0].path, []).append(s)
    assert len(by_video) == VIDEOS and sorted(len(v) for v in by_video.values()) == sorted(PER_VIDEO)
    for group in by_video.values():
        first = group[0]
        for s in group[1:]:
            assert s.clips[0].frames is first.clips[0].frames  # the same array, not a copy
            assert s.group == first.group and s.key != first.key
        assert len({s.record.turns[0].content for s in group}) == len(group)
        # the right frames: slot k of 2 fps takes the last 10 fps frame before (k + 1/2) / 2 s
        assert [read_counter(f) for f in first.clips[0].frames] == [2, 7, 12, 17]
    assert len(decodes()) == VIDEOS


def test_consecutive_samples_rarely_share_a_video(qa, decodes):
    seq = [s for s in StreamingDataset(config(qa, mix_buffer=8)) if s.record.media]
    same = sum(a.group == b.group for a, b in zip(seq, seq[1:]))
    # only when the buffer holds one group's samples alone (the end of the epoch)
    assert same <= max(PER_VIDEO) - 1
    unmixed = [s for s in StreamingDataset(config(qa, mix_buffer=0)) if s.record.media]
    assert sum(a.group == b.group for a, b in zip(unmixed, unmixed[1:])) == sum(k - 1 for k in PER_VIDEO)


def test_mix_buffer_bytes_bound_the_frames_held(qa):
    from mmstream import timing

    timing.enable()
    timing.reset()
    try:
        list(StreamingDataset(config(qa, mix_buffer=64, mix_buffer_mb=0.01)))  # 10 KB: one clip at a time
        peak = timing.snapshot()["peaks"]["mix_peak_bytes"]
    finally:
        timing.enable(False)
    clip_bytes = 4 * 72 * 96 * 3
    assert clip_bytes <= peak < 2 * clip_bytes


def test_shuffle_by_group_is_seeded_and_independent_of_the_split(qa):
    e0 = [s.key for s in StreamingDataset(config(qa, mix_buffer=0), emit_drops=True)]
    assert [s.key for s in StreamingDataset(config(qa, mix_buffer=0), emit_drops=True)] == e0
    ds = StreamingDataset(config(qa, mix_buffer=0), emit_drops=True)
    ds.set_epoch(1)
    e1 = [s.key for s in ds]
    assert set(e1) == set(e0) and e1 != e0
    ordered = StreamingDataset(config(qa, mix_buffer=0, shuffle=False), emit_drops=True)
    first_positions = []
    for s in ordered:
        g = ordered.index.group[int(s.key.split("-")[1])]
        if not first_positions or first_positions[-1][0] != g:
            first_positions.append((g, int(s.key.split("-")[1])))
    assert [p for _, p in first_positions] == sorted(p for _, p in first_positions)  # groups in file order


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_a_full_mix_buffer_yields_exactly_the_rest(qa, decodes, workers):
    cfg = config(qa, mix_buffer=6)
    loader = StatefulDataLoader(StreamingDataset(cfg), batch_size=None, num_workers=workers, collate_fn=identity)
    it = iter(loader)
    first = [next(it).key for _ in range(12)]
    state = loader.state_dict()
    del it, loader
    pending = [p for w in _worker_states(state) for p in w["pending"]]
    assert pending, "the mix buffer was empty: the test would not test it"

    decoded_before = len(decodes())
    loader2 = StatefulDataLoader(StreamingDataset(cfg), batch_size=None, num_workers=workers, collate_fn=identity)
    loader2.load_state_dict(state)
    rest = [s.key for s in loader2]
    after = decodes()[decoded_before:]
    kept = {f"qa-{i:08d}" for i, r in enumerate(qa["records"]) if "gone" not in r["id"]}
    assert len(first) + len(rest) == len(kept) and set(first) | set(rest) == kept
    # after the resume, exactly the videos with records still to hand out are decoded, once each
    video_of = lambda key: qa["records"][int(key.split("-")[1])].get("video")  # noqa: E731
    assert sorted(after) == sorted({str(qa["root"] / video_of(k)) for k in rest if video_of(k)})
    assert {video_of(k) for k in first} - {video_of(k) for k in rest} - {None}, \
        "no group was fully consumed before the state was saved: the test would not test it"
    whole = StatefulDataLoader(StreamingDataset(cfg), batch_size=None, num_workers=workers, collate_fn=identity)
    assert first + rest == [s.key for s in whole]  # the very sequence of an uninterrupted epoch


def _worker_states(state):
    """The dataset states inside a StatefulDataLoader state (one per worker, or the main one)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if "groups_done" in x and "pending" in x:
                found.append(x)
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return found


def test_a_group_dropped_before_decoding_costs_no_decode(qa, decodes):
    cfg = config(qa)
    cfg["filter"] = {"max_frames": 3}  # every video plans 4 frames
    out = list(StreamingDataset(cfg, emit_drops=True))
    assert {d.reason for d in out if isinstance(d, Drop) and "gone" not in json.dumps(d.key)} >= {"too_many_frames"}
    assert sum(isinstance(d, Drop) and d.reason == "too_many_frames" for d in out) == sum(PER_VIDEO)
    assert decodes() == []


def test_budget_applies_per_record_within_a_group(tmp_path, decodes):
    from tiny_tok import make_tokenizer

    encode_counter_video(tmp_path / "v.mp4", num_frames=20, fps="10", size=(96, 72))
    recs = [{"id": f"q{i}", "video": "v.mp4",
             "conversations": [{"from": "human", "value": "<video>\n" + " ".join(["word"] * n)},
                               {"from": "gpt", "value": "ok"}]} for i, n in enumerate([1, 50, 2])]
    ann = write_jsonl(tmp_path / "a.jsonl", recs)
    tok = make_tokenizer(tmp_path / "tok")
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": ann}],
           "sampling": {"fps": 2, "max_frames": 4, "decoder": "backends:CountingBackend"},
           "model": {"name": "minicpmv-2.5", "tokenizer": tok},
           "filter": {"max_tokens": 4 * 96 + 30}}
    out = {i.key: i for i in StreamingDataset(cfg, emit_drops=True)}
    assert isinstance(out["s-00000001"], Drop) and out["s-00000001"].reason == "too_many_tokens"
    assert isinstance(out["s-00000000"], Sample) and isinstance(out["s-00000002"], Sample)
    assert out["s-00000000"].tokens["text"] != out["s-00000002"].tokens["text"]
    assert len(decodes()) == 1


def test_same_video_in_two_sources_or_two_samplings_is_not_merged(qa, decodes, tmp_path):
    one = [r for r in qa["records"] if r.get("video") == "videos/v4.mp4"]
    a = write_jsonl(tmp_path / "a.jsonl", one)
    b = write_jsonl(tmp_path / "b.jsonl", one)
    root = str(qa["root"])
    cfg = {"sources": [{"name": "a", "format": "llava", "annotations": a, "media_root": root},
                       {"name": "b", "format": "llava", "annotations": b, "media_root": root,
                        "sampling": {"fps": 1}}],
           "sampling": {"fps": 2, "max_frames": 4, "decoder": "backends:CountingBackend"}}
    out = list(StreamingDataset(cfg))
    assert len(out) == 2 * len(one)
    assert len(decodes()) == 2  # once per source: their sampling differs, and sources never share
    frames = {s.source: len(s.clips[0].frames) for s in out}
    assert frames == {"a": 4, "b": 2}
    same = dict(cfg, sources=[dict(cfg["sources"][0]), dict(cfg["sources"][1], sampling={})])
    list(StreamingDataset(same))
    assert len(decodes()) == 4  # same sampling, still two sources: two groups


def test_index_memory_is_arrays_not_records(qa):
    ds = StreamingDataset(config(qa))
    idx = ds.index
    assert idx.num_positions == len(qa["records"])
    assert idx.num_groups == VIDEOS + TEXT_ONLY + 1
    assert idx.nbytes() < 64 * idx.num_positions + 64
    assert all(isinstance(a, np.ndarray) for a in (idx.offset, idx.group, idx.order))


def test_split_by_cost_balances_and_covers_every_group():
    from mmstream.stream import split_by_cost

    rng = np.random.default_rng(0)
    costs = np.concatenate([[600.0], rng.uniform(1, 20, 300), [150.0, 140.0]]).astype(np.float32)
    for workers in (1, 2, 3, 7):
        owner = split_by_cost(costs, workers)
        assert owner.shape == costs.shape and set(owner) <= set(range(workers))
        loads = np.bincount(owner, weights=costs, minlength=workers)
        assert loads.max() <= max(costs.max(), costs.sum() / workers) * 1.05
        assert np.array_equal(owner, split_by_cost(costs.copy(), workers))  # the same on every rank
    # many groups: past the greedy head, the rest still balances
    many = rng.pareto(1.5, 20_000).astype(np.float32) + 1
    loads = np.bincount(split_by_cost(many, 4), weights=many, minlength=4)
    assert loads.max() / loads.mean() < 1.05
