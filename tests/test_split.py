"""A long clip decoded in parts (by other workers, in the Ray engine) and joined: the same
frames as one decode of the whole; a part that is missing, failed or short makes the
joining worker decode the clip whole, so the outcome never depends on the split."""
import numpy as np
import pytest

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.media import split
from mmstream.pipeline import Parts
from mmstream.synth import encode_counter_video, read_counter
from mmstream.types import Clip, MediaPlan, Sample


def test_part_bounds_cover_every_frame_once_in_order():
    assert split.part_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split.part_bounds(128, 2) == [(0, 64), (64, 128)]
    for n in (1, 7, 150, 1801):
        for parts in (1, 2, 3, 5):
            b = split.part_bounds(n, parts)
            assert b[0][0] == 0 and b[-1][1] == n and all(b[k][1] == b[k + 1][0] for k in range(parts - 1))


def test_only_video_files_with_enough_frames_split():
    def job(n, kind="video", path="v.mp4"):
        return MediaPlan(kind, path, 8, 8, list(range(n)), [i / 2 for i in range(n)], 2.0)

    assert split.splits(job(2 * split.MIN_PART_FRAMES), 2)
    assert not split.splits(job(2 * split.MIN_PART_FRAMES - 1), 2)
    assert not split.splits(job(500), 1)
    assert not split.splits(job(500, kind="frames"), 2)  # a folder of images: no key frames to seek to
    assert not split.splits(job(500, kind="pages", path=None), 2)
    p = split.part_plan(job(10), 2, 3)
    assert p.indices == [6, 7, 8, 9] and p.timestamps == [3.0, 3.5, 4.0, 4.5]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """A 14 s counter video (B-frames, a key frame every 50 frames) sampled at 15 fps:
    210 planned frames, plus a short one."""
    root = tmp_path_factory.mktemp("split")
    encode_counter_video(root / "long.mp4", num_frames=350, fps="25", size=(96, 72), gop=50, bframes=2)
    encode_counter_video(root / "short.mp4", num_frames=20, fps="25", size=(96, 72))
    conv = [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "That."}]
    write_jsonl(root / "a.jsonl", [{"id": "long", "video": "long.mp4", "conversations": conv},
                                   {"id": "long_q2", "video": "long.mp4", "conversations": conv},
                                   {"id": "short", "video": "short.mp4", "conversations": conv}])
    cfg = {"sources": [{"name": "s", "format": "llava", "annotations": str(root / "a.jsonl"), "media_root": str(root)}],
           "sampling": {"fps": 15, "max_frames": None, "strategy": "none", "decode_timeout": None}}
    return cfg


def _group(ds, key):
    """The decode group of the record at ``key``'s line."""
    line = {"long": 0, "short": 2}[key]
    return next(int(g) for g in ds.epoch_groups(0) if line in ds.index.members(g).tolist())


def _clips(outcomes):
    samples = [o for _, o in outcomes]
    assert samples and all(isinstance(s, Sample) for s in samples)
    return samples


@pytest.mark.parametrize("parts,supervised", [(2, False), (3, False), (2, True)])
def test_a_clip_joined_from_its_parts_equals_the_whole(long_clip, parts, supervised):
    if supervised:  # decoded by the decode helper process (the default)
        long_clip = {**long_clip, "sampling": {**long_clip["sampling"], "decode_timeout": 60}}
    ds = StreamingDataset(long_clip)
    g = _group(ds, "long")
    whole = _clips(ds._run_group(ds.pipeline, g, ds.index.members(g)))
    helper = StreamingDataset(long_clip)  # another worker: its own dataset and pipeline
    found = [helper.decode_part(helper.pipeline, g, k, parts) for k in range(1, parts)]
    assert all(len(f) == 1 for f in found)  # one clip of the group splits
    ds.pipeline.parts = Parts(parts, lambda: found)
    joined = _clips(ds._run_group(ds.pipeline, g, ds.index.members(g)))
    assert ds.pipeline.parts.joined == 1  # decoded once for both records, in parts
    for a, b in zip(whole, joined):
        assert a.key == b.key
        ca, cb = a.clips[0], b.clips[0]
        assert cb.num_frames == 210 and np.array_equal(ca.frames, cb.frames)
        assert ca.source_indices.tolist() == cb.source_indices.tolist()
        assert ca.timestamps.tolist() == cb.timestamps.tolist()
        assert [read_counter(f) for f in cb.frames] == cb.source_indices.tolist()
        assert b.record == a.record


def test_a_missing_or_short_part_is_decoded_whole_here(long_clip):
    ds = StreamingDataset(long_clip)
    g = _group(ds, "long")
    whole = _clips(ds._run_group(ds.pipeline, g, ds.index.members(g)))[0].clips[0]
    (sig, part), = ds.decode_part(ds.pipeline, g, 1, 2).items()
    short = Clip(part.kind, part.path, part.frames[:-1], part.timestamps[:-1], part.source_indices[:-1], part.fps)
    for found in ([{}], [], [{sig: None}], [{sig: short}]):  # lost, never came, failed, salvaged short
        ds.pipeline.parts = Parts(2, lambda: found)
        got = _clips(ds._run_group(ds.pipeline, g, ds.index.members(g)))[0].clips[0]
        assert ds.pipeline.parts.joined == 0
        assert np.array_equal(got.frames, whole.frames) and got.source_indices.tolist() == whole.source_indices.tolist()


def test_a_short_clip_is_never_split(long_clip):
    ds = StreamingDataset(long_clip)
    g = _group(ds, "short")
    assert ds.decode_part(ds.pipeline, g, 1, 2) == {}
    ds.pipeline.parts = Parts(2, lambda: pytest.fail("a short clip's parts were asked for"))
    (sample,) = _clips(ds._run_group(ds.pipeline, g, ds.index.members(g)))
    assert sample.clips[0].num_frames == 12 and ds.pipeline.parts.joined == 0
