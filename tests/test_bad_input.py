"""Bad input never crashes a run: each problem is skipped and counted, or raises in strict mode."""
import json

import pytest

from conftest import write_jsonl
from mmstream import StreamingDataset
from mmstream.errors import SampleError
from mmstream.synth import encode_counter_video
from mmstream.types import Drop

REASONS = {
    "zero_byte": "decode_error",
    "truncated": "decode_error",
    "text": "decode_error",
    "missing": "missing_media",
    "outside": "path_outside_root",
}


@pytest.fixture
def bad_dataset(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    good = encode_counter_video(media / "good.mp4", num_frames=50, size=(64, 48))
    data = open(good, "rb").read()
    (media / "zero_byte.mp4").write_bytes(b"")
    (media / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (media / "text.mp4").write_text("not a video at all\n")
    videos = {"good": "good.mp4", "zero_byte": "zero_byte.mp4", "truncated": "truncated.mp4",
              "text": "text.mp4", "missing": "missing.mp4", "outside": "../good.mp4"}
    lines = []
    for name, path in videos.items():
        lines.append(json.dumps({"id": name, "video": path, "conversations": [
            {"from": "human", "value": "<video>\nWhat is it?"}, {"from": "gpt", "value": name}]}))
    lines.insert(3, '{"id": "broken", "video": "good.mp4", "conversations": [')  # malformed line
    ann = write_jsonl(tmp_path / "ann.jsonl", lines)
    return {"sources": [{"name": "s", "format": "llava", "annotations": ann, "media_root": str(media)}],
            "sampling": {"fps": 2, "max_frames": 4}, "loader": {"shuffle": False}}


def test_each_problem_is_skipped_with_its_reason(bad_dataset):
    items = list(StreamingDataset(bad_dataset, emit_drops=True))
    kept = [i for i in items if not isinstance(i, Drop)]
    drops = {i.key: i for i in items if isinstance(i, Drop)}
    assert [s.record.id for s in kept] == ["good"]
    by_id = {"s-00000000": "good", "s-00000001": "zero_byte", "s-00000002": "truncated",
             "s-00000003": "broken", "s-00000004": "text", "s-00000005": "missing", "s-00000006": "outside"}
    got = {by_id[k]: d.reason for k, d in drops.items()}
    assert got == {**REASONS, "broken": "bad_json"}
    assert all(d.path for d in drops.values()), "every drop names a path"
    ds = StreamingDataset(bad_dataset)
    assert len(list(ds)) == 1
    assert ds.stats["decode_error"] == 3 and ds.stats["missing_media"] == 1 and ds.stats["bad_json"] == 1


@pytest.mark.parametrize("position,reason", [(1, "decode_error"), (3, "bad_json"), (5, "missing_media"),
                                             (6, "path_outside_root")])
def test_strict_mode_raises_naming_the_key(bad_dataset, position, reason):
    # keep only the good record and one bad one, so the first error is the one under test
    bad_dataset["strict"] = True
    ds = StreamingDataset(bad_dataset)
    ds.skip_keys = frozenset(f"s-{i:08d}" for i in range(7) if i not in (0, position))
    with pytest.raises(SampleError) as err:
        list(ds)
    assert err.value.reason == reason
    assert f"s-{position:08d}" in str(err.value)
