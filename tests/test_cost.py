"""The cost model (mmstream/media/cost.py) and the facts it reads (mp4index.video_facts,
media/facts.py): given these numbers, expect these; the facts equal a full probe's, and the
planned frame counts equal the planner's."""
import math

import numpy as np
import pytest

from mmstream.config import SamplingConfig
from mmstream.media import cost
from mmstream.media.cost import FACTS_DTYPE, decoded_frames, group_costs, planned_frames
from mmstream.media.facts import media_facts
from mmstream.media.mp4index import video_facts
from mmstream.media.probe import probe_video
from mmstream.media.sampling import qwen_nframes
from mmstream.synth import encode_counter_video


def sampling(**kw) -> SamplingConfig:
    from mmstream.config import load_config

    return load_config({"sources": [{"name": "s", "annotations": "x.jsonl"}], "sampling": kw}).sources[0].sampling


def test_planned_frames_follow_the_sampling_rule():
    secs, frames = np.array([0.2, 10.0, 30.4, 1800.0]), np.array([5, 250, 760, 45000])
    assert planned_frames(secs, frames, sampling(fps=1.0, max_frames=24)).tolist() == [1, 10, 24, 24]
    assert planned_frames(secs, frames, sampling(fps=1.0, max_frames=None, strategy="none")).tolist() == \
        [1, 10, 30, 1800]
    assert planned_frames(secs, frames, sampling(fps=2.0, max_frames=24, strategy="none")).tolist() == \
        [1, 20, 61, 3600]  # strategy none: no cap
    assert planned_frames(secs, frames, sampling(fps=None, max_frames=None)).tolist() == [5, 250, 760, 45000]
    qwen = sampling(frame_rule="qwen_vl_utils", fps=2.0, max_frames=768, min_frames=4)
    want = [qwen_nframes(int(f), f / s, 2.0, 4, 768) for s, f in zip(secs, frames)]
    assert planned_frames(secs, frames, qwen).tolist() == want


def test_decoded_frames_whole_video_when_dense_half_a_gop_per_target_when_sparse():
    # 1500 frames, a key frame every 250: 60 targets (one every 25 frames) decode it all
    assert decoded_frames(np.array([1500.0]), np.array([6.0]), np.array([60.0]))[0] == 1500
    # 24 targets of 45000 frames with a key frame every 250: 24 x (125 + 1)
    assert decoded_frames(np.array([45000.0]), np.array([180.0]), np.array([24.0]))[0] == 24 * 126
    # all key frames (intra-only): one frame per target
    assert decoded_frames(np.array([100.0]), np.array([100.0]), np.array([10.0]))[0] == 15


def facts(**fields) -> np.ndarray:
    row = np.zeros(1, FACTS_DTYPE)
    for k, v in fields.items():
        row[k] = v
    return row


def long_and_short():
    """A 30-minute 720p video (GOP 250) and a 20 s one, as the index sees them."""
    return np.concatenate([
        facts(videos=1, probed=1, seconds=1800, frames=45000, keyframes=180, pixels=1280 * 720, bytes=3e8),
        facts(videos=1, probed=1, seconds=20, frames=500, keyframes=2, pixels=1280 * 720, bytes=3e6)])


def test_dense_sampling_costs_the_whole_long_video_capped_sampling_a_bounded_part():
    dense = group_costs(long_and_short(), sampling(fps=1.0, max_frames=None, strategy="none"))
    capped = group_costs(long_and_short(), sampling(fps=1.0, max_frames=24))
    # dense: both decode everything, so the cost follows the duration (90x), not sqrt(bytes) (10x)
    assert 80 < dense[0] / dense[1] < 95
    # capped at 24: the long video is 24 half-GOPs (3024 frames) against the short one's 500
    # (measured on the benchmark set's 720p GOP-250 clips: 4.23 CPU-s for 300 s, 0.83 for 20 s)
    assert 4 < capped[0] / capped[1] < 6
    # the formula, term by term
    px = 1280 * 720
    assert math.isclose(dense[0], cost.NO_MEDIA_S + cost.OPEN_S + 45000 * px * cost.DECODE_S_PER_PIXEL
                        + 1800 * px * cost.OUTPUT_S_PER_PIXEL, rel_tol=1e-5)


def test_resize_lowers_the_output_term_only():
    full = group_costs(long_and_short(), sampling(fps=1.0, max_frames=None, strategy="none"))
    small = group_costs(long_and_short(), sampling(fps=1.0, max_frames=None, strategy="none",
                                                   resize={"max_pixels": 1280 * 720 // 4}))
    saved = 1800 * (1280 * 720 * 3 / 4) * cost.OUTPUT_S_PER_PIXEL
    assert math.isclose(full[0] - small[0], saved, rel_tol=1e-4)


def test_unprobed_videos_images_and_folders_are_costed_from_what_is_known():
    rows = np.concatenate([
        facts(videos=1, unprobed_bytes=30e6, bytes=30e6),  # a 30 MB .webm
        facts(videos=1, unprobed_bytes=3e6, bytes=3e6),
        facts(images=1, image_bytes=2e5, bytes=2e5),
        facts(folder_frames=100),
        facts(pages=1),
        facts()])
    c = group_costs(rows, sampling(fps=1.0, max_frames=None, strategy="none"))
    assert c[0] > 5 * c[1] > 0  # ten times the bytes: dense sampling decodes ten times the video
    assert c[1] > c[2] > c[5] and c[3] > c[2] and c[4] > c[5]
    assert c[5] == np.float32(cost.NO_MEDIA_S)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "gop10_b": encode_counter_video(d / "a.mp4", num_frames=83, fps="25", size=(96, 64), gop=10, bframes=2),
        "one_key": encode_counter_video(d / "b.mp4", num_frames=40, fps="10", size=(64, 48)),
        "ntsc": encode_counter_video(d / "c.mov", num_frames=61, fps="30000/1001", size=(80, 48), gop=12),
        "rotated": encode_counter_video(d / "d.mp4", num_frames=30, size=(96, 64), rotate=90, gop=15),
    }


def test_video_facts_equal_a_full_probe(clips):
    for name, path in clips.items():
        with open(path, "rb") as f:
            got = video_facts(f)
        info = probe_video(str(path), from_index=False)
        assert got.frames == info.num_frames and got.keyframes == len(info.keyframes), name
        # the track's duration may hold one more frame than the timestamps span (B-frame delay)
        assert abs(got.seconds - info.duration_seconds) <= 1.01 * got.seconds / got.frames, name
        assert got.width * got.height == info.width * info.height, name


def test_facts_of_a_file_that_is_not_an_mp4_are_its_bytes(tmp_path):
    webm = encode_counter_video(tmp_path / "v.webm", num_frames=10, size=(64, 48), codec="libvpx-vp9")
    row = media_facts((("video", "path", str(webm)),))
    assert row["videos"] == 1 and row["probed"] == 0 and row["unprobed_bytes"] == (tmp_path / "v.webm").stat().st_size
    fake = tmp_path / "x.mp4"
    fake.write_bytes(b"not a video at all")
    row = media_facts((("video", "path", str(fake)), ("image", "path", str(tmp_path / "missing.jpg"))))
    assert row["probed"] == 0 and row["unprobed_bytes"] == 18 and row["images"] == 1 and row["image_bytes"] == 0


@pytest.mark.parametrize("kw", [dict(fps=1.0, max_frames=24), dict(fps=2.0, max_frames=None, strategy="none"),
                                dict(fps=3.0, max_frames=5, strategy="uniform"),
                                dict(frame_rule="qwen_vl_utils", fps=2.0, max_frames=768, min_frames=4)])
def test_planned_frames_from_the_facts_equal_the_planner(clips, kw):
    from mmstream.media import plan_media
    from mmstream.types import MediaRef

    s = sampling(**kw)
    for name, path in clips.items():
        row = media_facts((("video", "path", str(path)),))
        got = planned_frames(row["seconds"] / row["probed"], row["frames"] / row["probed"], s)
        plan = plan_media(MediaRef("video", str(path), root="/"), s)
        assert int(got) == plan.num_frames, (name, kw)
