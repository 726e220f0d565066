"""Frame selection: the REFERENCE rules as numbers, then real decoders against ffmpeg's fps filter."""
import os
from fractions import Fraction

import numpy as np
import pytest
from torch.utils.data import IterableDataset

from conftest import requires_ffmpeg
from mmstream.config import ResizeConfig, SamplingConfig
from mmstream.errors import SampleError
from mmstream.media import decode_media, plan_media
from mmstream.media.backends.pyav import MIN_SEEK_GAP, seek_plan
from mmstream.media.probe import probe_video
from mmstream.media.sampling import cap_indices, fps_sample_indices, resize_to, t2vid_indices, uniform_indices
from mmstream.synth import encode_counter_video, ffmpeg_fps_indices, make_frame_folder, read_counter
from mmstream.types import MediaRef


# -- the rules as numbers (REFERENCE section 2) ------------------------------------------
def test_fps_rule_reference_vectors():
    pts25 = list(range(310))  # 25 fps, 12.4 s, time base 1/25
    one = fps_sample_indices(pts25, Fraction(1, 25), 1)
    assert len(one) == 12 and one[:3] == [12, 37, 62] and one[-1] == 287
    two = fps_sample_indices(pts25, Fraction(1, 25), 2)
    assert len(two) == 25 and two[:4] == [6, 18, 31, 43]
    ntsc = fps_sample_indices([i * 1001 for i in range(420)], Fraction(1, 30000), 1)
    assert ntsc[:3] == [14, 44, 74]
    assert fps_sample_indices(list(range(15)), Fraction(1, 25), 1) == [12]  # 0.6 s clip


def test_fps_rule_half_slots_round_up_and_short_clips_keep_one():
    # 2.5 s at 1 fps: floor(2.5 + 0.5) = 3 frames
    assert len(fps_sample_indices(list(range(50)), Fraction(1, 20), 1)) == 3
    # 0.4 s: ffmpeg emits nothing; mmstream keeps the first slot's frame (documented)
    assert fps_sample_indices(list(range(10)), Fraction(1, 25), 1) == [9]
    assert fps_sample_indices(list(range(10)), Fraction(1, 25), 1, keep_one=False) == []


def test_fps_rule_is_exact_at_slot_boundaries():
    # 20 fps in a 1/1000 time base: frame 50 sits exactly on 2.5 s, the threshold of slot 2.
    # "Earlier than" is strict, so slot 2 takes frame 49 (2.45 s); float drift would flip it.
    pts = [i * 50 for i in range(80)]
    out = fps_sample_indices(pts, Fraction(1, 1000), 1)
    assert out[2] == 49
    assert fps_sample_indices(pts, Fraction(1, 1000), "1.0") == out


def test_fps_rule_repeats_frames_when_the_source_is_slower():
    # 2 fps source sampled at 5 fps: slots with no new frame repeat the previous one
    out = fps_sample_indices([0, 1, 2, 3], Fraction(1, 2), 5)
    assert len(out) == 10 and out == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]


def test_t2vid_reference_vectors():
    got = t2vid_indices(100, 24)
    assert got[:3] == [2, 6, 10] and got[-2:] == [93, 97] and len(got) == 24
    assert t2vid_indices(25, 24) == list(range(24))
    assert t2vid_indices(24, 24) == list(range(24))
    assert t2vid_indices(5, 24) == list(range(5))


def test_caps():
    idx = list(range(100, 200))
    assert cap_indices(idx, 24, "t2vid") == [100 + i for i in t2vid_indices(100, 24)]
    assert cap_indices(idx, 24, "none") == idx
    assert cap_indices(idx, None, "t2vid") == idx
    u = uniform_indices(100, 5)
    assert u == [0, 25, 50, 74, 99] or u == [0, 25, 50, 74, 99]
    assert uniform_indices(3, 5) == [0, 1, 2]


def test_resize_to():
    assert resize_to(1280, 720, short_side=448) == (796, 448)
    assert resize_to(1280, 720, max_pixels=640 * 360) == (640, 360)
    assert resize_to(320, 240, max_pixels=10**6) == (320, 240)  # the bound never upscales


# -- real decoders against the real ffmpeg -----------------------------------------------
CLIPS = {
    "h264_bframes_25fps": dict(num_frames=310, fps="25", codec="libx264", bframes=3, gop=50),
    "h264_29.97fps": dict(num_frames=420, fps="30000/1001", codec="libx264", bframes=2),
    "h264_offset_start": dict(num_frames=140, fps="25", codec="libx264", bframes=2, start_pts_seconds="1.5"),
    "hevc_long_gop": dict(num_frames=310, fps="25", codec="libx265", gop=250),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for name, kw in CLIPS.items():
        out[name] = encode_counter_video(root / f"{name}.mp4", size=(160, 120), **kw)
    return out


def sample(path, decoder, fps, max_frames=None, strategy="none", **kw):
    s = SamplingConfig(fps=fps, max_frames=max_frames, strategy=strategy, decoder=decoder, **kw)
    plan = plan_media(MediaRef("video", str(path), root="/"), s)
    return plan, decode_media(plan, s)


@requires_ffmpeg
@pytest.mark.parametrize("name", list(CLIPS))
@pytest.mark.parametrize("fps", [1.0, 2.0])
@pytest.mark.parametrize("decoder", ["pyav", "decord", "torchcodec"])
def test_frames_equal_ffmpeg_fps_filter(clips, name, fps, decoder):
    expected = ffmpeg_fps_indices(clips[name], fps)
    plan, clip = sample(clips[name], decoder, fps)
    got = [read_counter(f) for f in clip.frames]
    assert got == expected
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (120, 160, 3)
    assert len(clip.timestamps) == len(got)


def test_offset_start_timestamps_are_source_times(clips):
    plan, clip = sample(clips["h264_offset_start"], "pyav", 1.0)
    assert clip.timestamps[0] == pytest.approx(1.5 + 12 / 25)
    assert [read_counter(f) for f in clip.frames][:2] == [12, 37]


@pytest.mark.parametrize("decoder", ["pyav", "decord", "torchcodec"])
def test_capped_sampling_and_resize(clips, decoder):
    plan, clip = sample(clips["h264_bframes_25fps"], decoder, 2.0, max_frames=8, strategy="t2vid",
                        resize=ResizeConfig(short_side=60))
    sampled = fps_sample_indices(list(range(310)), Fraction(1, 25), 2)
    assert [read_counter(f) for f in clip.frames] == [sampled[i] for i in t2vid_indices(25, 8)]
    assert clip.frames.shape[1:3] == (60, 80)


@pytest.mark.parametrize("other", ["decord", "torchcodec"])
def test_every_decoder_returns_the_same_frames(clips, other):
    for name in CLIPS:
        _, a = sample(clips[name], "pyav", 1.0, max_frames=5, strategy="uniform")
        _, b = sample(clips[name], other, 1.0, max_frames=5, strategy="uniform")
        assert [read_counter(f) for f in a.frames] == [read_counter(f) for f in b.frames]
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3


# Seek plan vs a forced-sequential read: short GOP, long GOP, B-frames, H.264 and HEVC
# (x265 makes open GOPs), and HEVC with temporal sub-layers (where non-reference
# skipping must stay off).
SEEK_CLIPS = {
    "h264_short_gop_bframes": dict(num_frames=200, fps="25", codec="libx264", gop=10, bframes=3),
    "h264_long_gop_bframes": dict(num_frames=310, fps="25", codec="libx264", gop=250, bframes=3),
    "h264_no_bframes": dict(num_frames=120, fps="25", codec="libx264", gop=30, bframes=0),
    "hevc_short_gop_bframes": dict(num_frames=200, fps="25", codec="libx265", gop=12, bframes=3),
    "hevc_long_gop": dict(num_frames=310, fps="25", codec="libx265", gop=250, bframes=4),
    "hevc_temporal_layers": dict(num_frames=120, fps="25", codec="libx265", options={
        "x265-params": "log-level=error:keyint=40:min-keyint=25:scenecut=0:bframes=3:b-adapt=0:temporal-layers=3"}),
}


@pytest.fixture(scope="module")
def seek_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("seek_clips")
    return {name: encode_counter_video(root / f"{name}.mp4", size=(96, 64), **kw) for name, kw in SEEK_CLIPS.items()}


def target_sets(n):
    """Dense (every frame, every 2nd, 1 fps at 25 fps) and sparse (T2Vid-like spread, a
    single frame, the last frame, pairs straddling key frames) targets."""
    sets = [list(range(n)), list(range(0, n, 2)), list(range(12, n, 25)), [n - 1], [0], [5, 6],
            sorted({round(i * (n - 1) / 7) for i in range(8)}), [3, 120, 121, n - 2]]
    return [[t for t in s if t < n] for s in sets]


@pytest.mark.parametrize("name", list(SEEK_CLIPS))
def test_seek_plan_returns_exactly_the_frames_of_the_sequential_plan(seek_clips, name):
    from mmstream.media.backends.pyav import PyAVBackend

    path = seek_clips[name]
    info = probe_video(path)
    fast, plain = PyAVBackend(), PyAVBackend(seek=False, skip_nonref=False)
    for targets in target_sets(info.num_frames):
        ref = plain.read(path, info, targets, (96, 64))
        for threads in (1, 2):  # 2: frame threads, where the skip setting travels with each packet
            got = fast.read(path, info, targets, (96, 64), threads)
            assert sorted(got) == targets
            assert [read_counter(got[t]) for t in targets] == targets
            for t in targets:
                assert np.array_equal(got[t], ref[t]), f"{name}: frame {t} differs from the sequential read"


def test_an_indexed_mp4_is_decoded_without_the_stream_analysis_and_gives_the_same_frames(
        clips, seek_clips, tmp_path, monkeypatch):
    """A video probed from its MP4 index is opened for decoding without FFmpeg's stream
    analysis (the MP4 demuxer states the reorder delay; the analysis decoded up to 7 frames,
    ~10 ms a 720p H.264 clip); other containers keep it. Every frame is the one a decode
    after the analysis gives (B-frames, open GOPs, temporal sub-layers, an offset start)."""
    import dataclasses

    import av

    from mmstream.media.backends.pyav import PyAVBackend
    from mmstream.media.probe import FAST_OPEN

    opened = []
    real_open = av.open

    def spy(*args, **kwargs):
        opened.append(kwargs.get("stream_options"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    mkv = encode_counter_video(tmp_path / "bframes.mkv", num_frames=120, size=(96, 64), bframes=3, gop=50)
    for path in [mkv] + list(clips.values()) + list(seek_clips.values()):
        info = probe_video(path)
        # the offset start's edit list is the index reader's to refuse: demuxed, and analysed
        assert info.from_index == (str(path).endswith(".mp4") and "offset" not in str(path)), path
        analysed = dataclasses.replace(info, from_index=False)
        size = (info.width, info.height)
        for targets in target_sets(info.num_frames)[:3]:  # every frame, every 2nd, 1 fps
            opened.clear()
            got = PyAVBackend().read(path, info, targets, size)
            assert opened == [FAST_OPEN["stream_options"] if info.from_index else None], path
            ref = PyAVBackend().read(path, analysed, targets, size)
            assert [read_counter(got[t]) for t in targets] == targets, path
            assert all(np.array_equal(got[t], ref[t]) for t in targets), path


def test_seek_plan_never_seeks_backwards(seek_clips):
    from mmstream.media.backends.pyav import key_before

    for name in ("h264_short_gop_bframes", "hevc_long_gop"):
        info = probe_video(seek_clips[name])
        for targets in target_sets(info.num_frames):
            segments = seek_plan(info, targets)
            assert [p for _, _, run in segments for p in run] == targets  # every target once, in order
            for key, _, run in segments:  # each segment's targets are decoded from its key frame
                assert all(key_before(info, info.pts[p]) == (key if key is not None else info.keyframes[0])
                           for p in run)
            for (key, jump, run), (_, _, prev) in zip(segments[1:], segments):
                key_pos = info.pts.index(key)
                assert key_pos > prev[-1]  # forward only
                assert jump == (key_pos > prev[-1] + MIN_SEEK_GAP)  # near key frames are read up to, not sought
            assert seek_plan(info, targets, seek=False) == [(None, False, targets)]
    short = probe_video(seek_clips["h264_short_gop_bframes"])  # key frame every 10 frames
    dense = seek_plan(short, list(range(200)))
    assert len(dense) == 20 and not any(jump for _, jump, _ in dense)  # one segment per key frame, read on
    assert [(k, j) for k, j, _ in seek_plan(short, [5, 150, 163, 199])] == [
        (None, False), (short.pts[150], True), (short.pts[160], False), (short.pts[190], True)]


def test_seek_plan_groups_by_key_frame(clips):
    info = probe_video(clips["h264_bframes_25fps"])  # key frame every 50 frames (25 fps: 2 s)
    assert seek_plan(info, [3, 120, 121, 299]) == [(None, False, [3]), (info.pts[100], True, [120, 121]),
                                                   (info.pts[250], True, [299])]
    assert seek_plan(info, [60]) == [(info.pts[50], True, [60])]  # the first segment seeks too when it skips


def test_nonref_skipping_only_where_it_is_exact(seek_clips):
    from mmstream.media.backends.pyav import can_skip_nonref

    assert can_skip_nonref(probe_video(seek_clips["h264_long_gop_bframes"]))
    assert can_skip_nonref(probe_video(seek_clips["hevc_long_gop"]))
    layered = probe_video(seek_clips["hevc_temporal_layers"])
    assert layered.temporal_layers > 1 and not can_skip_nonref(layered)


class _ClipStream(IterableDataset):
    """Decodes one video in a DataLoader worker and yields the clip."""

    def __init__(self, path):
        self.path = path

    def __iter__(self):
        yield sample(self.path, "pyav", 1.0)[1]


@pytest.mark.parametrize("source", ["video", "frame_folder"])
@pytest.mark.parametrize("shared", ["1", "0"])
def test_clips_cross_from_a_dataloader_worker_intact(clips, monkeypatch, tmp_path, shared, source):
    """In a worker the clip is built in shared memory and arrives as a plain writable array
    mapping it (no copy through the pipe); with MMSTREAM_SHARED_FRAMES=0 it is pickled.
    Frame folders too: their images are read into the clip's rows."""
    from torch.utils.data import DataLoader

    from mmstream.media import shared as shm

    monkeypatch.setenv(shm.ENV, shared)
    path = clips["h264_bframes_25fps"]
    if source == "frame_folder":
        make_frame_folder(tmp_path / "vid", num_frames=80, fps="25", size=(96, 64))
        path = tmp_path / "vid.mp4"  # the folder stands in for the video
        assert sample(path, "pyav", 1.0)[0].kind == "frames"
    expected = sample(path, "pyav", 1.0)[1].frames
    assert type(expected.base).__module__ != "torch"  # not in a worker: ordinary memory
    (got,) = list(DataLoader(_ClipStream(path), batch_size=None, num_workers=1, collate_fn=lambda x: x))
    assert isinstance(got.frames, np.ndarray) and got.frames.flags.writeable
    assert np.array_equal(got.frames, expected)
    is_shared = type(got.frames.base).__module__ == "torch"
    assert is_shared == (shared == "1" and shm._shm_has_room(expected.nbytes))
    got.frames[0, 0, 0] = 7  # writable like any array


@requires_ffmpeg
def test_frame_folder_with_fps_sidecar(tmp_path):
    make_frame_folder(tmp_path / "vid", num_frames=310, fps="25", size=(96, 64))
    s = SamplingConfig(fps=1.0, max_frames=None, strategy="none")
    plan = plan_media(MediaRef("video", "vid.mp4", root=str(tmp_path)), s)  # the folder stands in for vid.mp4
    clip = decode_media(plan, s)
    assert plan.kind == "frames"
    assert [read_counter(f) for f in clip.frames] == fps_sample_indices(list(range(310)), Fraction(1, 25), 1)
    assert clip.timestamps[0] == pytest.approx(12 / 25)


def test_frame_folder_without_sidecar_is_taken_as_sampled(tmp_path):
    make_frame_folder(tmp_path / "f", num_frames=30, size=(64, 48))
    s = SamplingConfig(fps=1.0, max_frames=24, strategy="t2vid")
    clip = decode_media(plan := plan_media(MediaRef("frames", "f", root=str(tmp_path)), s), s)
    assert [read_counter(f) for f in clip.frames] == t2vid_indices(30, 24)
    assert plan.num_frames == 24


def test_rotated_video_comes_out_upright(tmp_path):
    path = encode_counter_video(tmp_path / "rot.mp4", num_frames=30, size=(160, 96), rotate=90)
    for decoder in ("pyav", "decord", "torchcodec"):
        plan, clip = sample(path, decoder, 1.0)
        assert clip.frames.shape[1:3] == (160, 96)  # portrait, as the ffmpeg CLI shows it
        assert [read_counter(f) for f in clip.frames] == [12]


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_the_probe_reads_the_rotation_from_the_first_packet_alone(tmp_path, container):
    """The display matrix rides on decoded frames: the probe drains the first packet's frame
    out of the decoder instead of feeding it the reorder delay's packets (B-frames: the
    first frame comes out by itself only after 2 more are decoded)."""
    import av

    from mmstream.media.probe import _rotation

    path = encode_counter_video(tmp_path / f"rot.{container}", num_frames=10, size=(64, 48), rotate=90, bframes=2)
    with av.open(path) as c:
        stream = c.streams.video[0]
        first = next(p for p in c.demux(stream) if p.size)
        assert not stream.codec_context.decode(first)  # held back for reordering
    with av.open(path) as c:
        stream = c.streams.video[0]
        first = next(p for p in c.demux(stream) if p.size)
        assert _rotation(stream.codec_context, first) == probe_video(path).rotation != 0
        assert probe_video(path).rotation == probe_video(path, from_index=False).rotation


def test_image_passes_through_and_rgba_is_flattened(tmp_path):
    from PIL import Image

    Image.new("RGBA", (40, 30), (255, 0, 0, 255)).save(tmp_path / "x.png")
    s = SamplingConfig()
    clip = decode_media(plan_media(MediaRef("image", "x.png", root=str(tmp_path)), s), s)
    assert clip.frames.shape == (1, 30, 40, 3) and tuple(clip.frames[0, 0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_bad_video_files_raise_sample_errors(tmp_path, clips, kind):
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n")
    else:
        data = open(clips["h264_bframes_25fps"], "rb").read()
        path.write_bytes(data[: len(data) // 2])
    for decoder in ("pyav", "torchcodec"):
        with pytest.raises(SampleError) as err:
            sample(path, decoder, 1.0)
        assert err.value.reason in ("decode_error", "no_frames") and str(path) in str(err.value)


def test_missing_and_outside_root(tmp_path):
    with pytest.raises(SampleError) as err:
        plan_media(MediaRef("video", "nope", root=str(tmp_path)), SamplingConfig())
    assert err.value.reason == "missing_media"
    with pytest.raises(SampleError) as err:
        plan_media(MediaRef("video", "../x.mp4", root=str(tmp_path)), SamplingConfig())
    assert err.value.reason == "path_outside_root"


def test_index_probe_equals_the_full_demux(clips, seek_clips, tmp_path):
    """The probe of MP4/MOV files (timestamps from the index, local files too) gives what a
    full demux gives, HEVC temporal sub-layers (the hvcC record's count) included."""
    rotated = encode_counter_video(tmp_path / "rot.mp4", num_frames=30, size=(160, 96), rotate=90)
    vfr = encode_counter_video(tmp_path / "vfr.mp4", num_frames=20, pts_list=[i * 0.1 + (0.03 if i % 3 else 0)
                                                                          for i in range(20)])
    mp4s = [p for p in list(clips.values()) + list(seek_clips.values()) if str(p).endswith(".mp4")]
    for path in mp4s + [rotated, vfr]:
        a, b = probe_video(str(path), from_index=True), probe_video(str(path), from_index=False)
        assert (a.pts, a.keyframes, a.time_base, a.width, a.height, a.rotation, a.average_rate, a.codec) == \
               (b.pts, b.keyframes, b.time_base, b.width, b.height, b.rotation, b.average_rate, b.codec), path
        assert (a.temporal_layers > 1) == (b.temporal_layers > 1), path
        assert probe_video(str(path)).pts == a.pts  # local MP4s take the index path by default
    assert probe_video(seek_clips["hevc_temporal_layers"], from_index=True).temporal_layers == 3


def test_decoder_threads_follow_the_cores_an_engine_granted():
    """A Ray task (1 CPU) decodes with 1 thread, not the node's cores; explicit threads win."""
    from mmstream.media.backends import available_cores, grant_cores, resolve_threads

    try:
        assert resolve_threads(0) == available_cores()  # main process: all its cores
        grant_cores(1)
        assert resolve_threads(0) == 1
        assert resolve_threads(3) == 3
        grant_cores(0)
        assert resolve_threads(0) == 1  # at least one
    finally:
        grant_cores(None)
    assert resolve_threads(0) == available_cores()


def _mapping_of(array: np.ndarray) -> str:
    """The /proc/self/maps line of the mapping that holds ``array``'s first byte."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line
    raise AssertionError("no mapping holds the array")


def _resident_kb(array: np.ndarray) -> int:
    """Resident kB (/proc/self/smaps) of the mapping that holds ``array``'s first byte."""
    head = _mapping_of(array).split()[0]
    with open("/proc/self/smaps") as f:
        lines = iter(f)
        for line in lines:
            if line.startswith(head + " "):
                for field in lines:
                    if field.startswith("Rss:"):
                        return int(field.split()[1])
    raise AssertionError("no smaps entry for the array's mapping")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_a_clip_outside_a_worker_is_private_memory_reused_up_to_32_mb_and_made_at_once_above():
    """Outside a DataLoader worker a clip below glibc's largest mmap threshold (32 MB) is
    private memory (``np.empty``: a freed clip's pages are reused; a shared mapping would be
    shmem, several times slower to write); a larger one, fresh memory every time anyway, is
    a private mapping whose pages the kernel made in one call, before any frame is written
    (measured faster in the decode limit's 720p runs than faulting them in one by one,
    shared or private, or numpy's huge pages). Either is an ordinary writable array: it
    pickles, and a view keeps its memory alive."""
    import pickle

    from mmstream.media.shared import REUSED_MAX_BYTES, frames_buffer

    small = frames_buffer((2, 8, 8, 3))
    mid = frames_buffer((24, 272, 480, 3))  # T2Vid's 24 frames of a 272p video: 9.4 MB
    big = frames_buffer((24, 720, 1280, 3))  # of a 720p one: 66 MB
    assert mid.nbytes < REUSED_MAX_BYTES <= big.nbytes
    for clip in (small, mid):
        assert _mapping_of(clip).split()[1].endswith("p"), _mapping_of(clip)  # "rw-s" is a shared mapping
    assert _mapping_of(big).split()[1].endswith("p"), _mapping_of(big)
    assert _resident_kb(big) >= big.nbytes // 1024, "the big clip's pages were not made at once"
    assert big.shape == (24, 720, 1280, 3) and big.dtype == np.uint8
    assert big.flags.writeable and big.flags.c_contiguous
    big[...] = 3
    big[1, 2, 3] = (1, 2, 250)
    view = big[1]
    del big
    assert view[2, 3].tolist() == [1, 2, 250] and int(view.sum(dtype=np.int64)) == 3 * view.size - 3 * 3 + 253
    back = pickle.loads(pickle.dumps(view))
    assert np.array_equal(back, view)
