"""Counter clips: every frame says which frame it is, through every codec we test with."""
from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from mmstream import synth
from mmstream.synth import (counter_rotation, decode_counters, draw_counter, encode_counter_video,
                            ffmpeg_fps_frames, ffmpeg_fps_indices, make_frame_folder, probe_video,
                            read_counter)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg/ffprobe CLI not installed")

SMALL = (160, 120)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The clips several tests read, encoded once."""
    root = tmp_path_factory.mktemp("clips")
    return {
        # 25 fps, 12.4 s: REFERENCE section 2's measured vectors
        "cfr_12s": encode_counter_video(root / "cfr_12s.mp4", num_frames=310, fps="25", size=SMALL),
        "short": encode_counter_video(root / "short.mp4", num_frames=15, fps=25, size=SMALL),
        "ntsc": encode_counter_video(root / "ntsc.mp4", num_frames=90, fps="30000/1001", size=SMALL),
        "offset": encode_counter_video(root / "offset.mp4", num_frames=50, fps="25", size=SMALL,
                                       start_pts_seconds=1.5, bframes=2),
    }


# --------------------------------------------------------------------------- drawing and reading


@pytest.mark.parametrize("value", [0, 1, 2, 255, 256, 12345, synth.MAX_COUNTER])
def test_draw_read_round_trip(value):
    assert read_counter(draw_counter(value, SMALL)) == value
    assert read_counter(draw_counter(value, (320, 240), label=False)) == value


def test_counter_out_of_range():
    with pytest.raises(ValueError):
        draw_counter(synth.MAX_COUNTER + 1)
    with pytest.raises(ValueError):
        draw_counter(-1)


@pytest.mark.parametrize("frame", [
    np.zeros((120, 160, 3), np.uint8),
    np.full((120, 160, 3), 255, np.uint8),
    np.full((120, 160, 3), 128, np.uint8),
    np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8),
], ids=["black", "white", "grey", "noise"])
def test_non_counter_frames_raise(frame):
    with pytest.raises(ValueError):
        read_counter(frame)


def test_flipped_cell_fails_the_check():
    img = draw_counter(1000, SMALL, label=False)
    x0, y0, x1, y1 = synth.GRID_BOX
    w, h = SMALL
    xa, xb = int(w * (x0 + 2 * (x1 - x0) / synth.GRID_COLS)), int(w * (x0 + 3 * (x1 - x0) / synth.GRID_COLS))
    ya, yb = int(h * y0), int(h * (y0 + (y1 - y0) / synth.GRID_ROWS))
    img[ya + 1:yb - 1, xa + 1:xb - 1] = 255 - img[(ya + yb) // 2, (xa + xb) // 2]  # invert cell 2
    with pytest.raises(ValueError, match="check"):
        read_counter(img)


@pytest.mark.parametrize("turn", [0, 90, 180, 270])
def test_rotation_is_detected(turn):
    img = np.rot90(draw_counter(77, SMALL), k=-turn // 90)  # turned clockwise
    assert counter_rotation(img) == turn
    assert read_counter(img, any_rotation=True) == 77
    if turn:
        with pytest.raises(ValueError, match="turned"):
            read_counter(img)


# --------------------------------------------------------------------------- codecs


CODECS = {
    "h264_bframes": dict(name="a.mp4", codec="libx264", bframes=3),
    "h264_gop250": dict(name="b.mp4", codec="libx264", gop=250, num_frames=260),
    "hevc_gop250": dict(name="c.mp4", codec="libx265", gop=250, bframes=2, num_frames=260),
    "vp9_webm": dict(name="d.webm", codec="libvpx-vp9"),
    "mpeg4": dict(name="e.mp4", codec="mpeg4", bframes=2),
    "h264_mkv_2997": dict(name="f.mkv", codec="libx264", fps="30000/1001"),
}


@pytest.mark.parametrize("case", list(CODECS))
def test_codec_round_trip(tmp_path, case):
    kw = dict(CODECS[case])
    name = kw.pop("name")
    n = kw.pop("num_frames", 40)
    path = encode_counter_video(tmp_path / name, num_frames=n, size=SMALL, **kw)
    decoded = decode_counters(path)
    assert [c for _, c in decoded] == list(range(n))
    rate = Fraction(kw.get("fps", "25"))
    tol = 0.0011 if name.endswith((".webm", ".mkv")) else 1e-6  # Matroska stores milliseconds
    assert all(abs(t - float(i / rate)) <= tol for i, (t, _) in enumerate(decoded))


def test_bframes_and_long_gop_structure(tmp_path):
    path = encode_counter_video(tmp_path / "g.mp4", num_frames=260, size=SMALL, gop=250, bframes=3)
    with av.open(path) as c:
        frames = list(c.decode(video=0))
    keys = [i for i, f in enumerate(frames) if f.key_frame]
    assert keys == [0, 250]
    assert any(f.pict_type == av.video.frame.PictureType.B for f in frames)


def test_half_size_and_other_sizes(tmp_path):
    path = encode_counter_video(tmp_path / "h.mp4", num_frames=12, size=(320, 240), bframes=2)
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(video=0)):
            img = frame.to_image()
            for size in [(160, 120), (448, 336), (100, 300), (64, 48)]:
                assert read_counter(np.asarray(img.resize(size, Image.BILINEAR))) == i
            assert read_counter(frame.reformat(width=160, height=120).to_ndarray(format="rgb24")) == i


def test_exact_ntsc_rate(clips):
    with av.open(clips["ntsc"]) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == Fraction(30000, 1001)
        pts = [f.pts * f.time_base for f in c.decode(stream)]
    assert pts == [Fraction(1001 * i, 30000) for i in range(90)]


def test_variable_frame_rate(tmp_path):
    times = [0, 0.04, 0.1, 0.5, 0.52, 1.0]
    path = encode_counter_video(tmp_path / "vfr.mp4", num_frames=6, size=SMALL, pts_list=times)
    decoded = decode_counters(path)
    assert [c for _, c in decoded] == list(range(6))
    assert [round(t, 6) for t, _ in decoded] == times


def test_solid_colour(tmp_path):
    path = encode_counter_video(tmp_path / "red.mp4", num_frames=3, size=SMALL, color=(255, 0, 0))
    with av.open(path) as c:
        for frame in c.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).astype(int)
            assert np.abs(rgb - [255, 0, 0]).max() <= 6
            with pytest.raises(ValueError):
                read_counter(frame.to_ndarray(format="rgb24"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        encode_counter_video(tmp_path / "x.webm", num_frames=3, codec="libvpx-vp9", bframes=2)
    with pytest.raises(ValueError):
        encode_counter_video(tmp_path / "x.mp4", num_frames=3, pts_list=[0, 0.1])
    with pytest.raises(ValueError):
        encode_counter_video(tmp_path / "x.mp4", num_frames=2, rotate=45)


# --------------------------------------------------------------------------- ffmpeg ground truth


@needs_ffmpeg
def test_start_offset_is_real(clips):
    info = probe_video(clips["offset"])
    assert info["start_time"] == pytest.approx(1.5)
    decoded = decode_counters(clips["offset"])
    assert decoded[0] == (1.5, 0)
    assert [c for _, c in decoded] == list(range(50))
    assert ffmpeg_fps_indices(clips["offset"], 1) == [12, 37]


@needs_ffmpeg
def test_ffmpeg_vectors_from_reference(clips):
    assert ffmpeg_fps_indices(clips["cfr_12s"], 1) == list(range(12, 288, 25))
    two = ffmpeg_fps_indices(clips["cfr_12s"], 2)
    assert len(two) == 25 and two[:4] == [6, 18, 31, 43]
    assert ffmpeg_fps_indices(clips["short"], 1) == [12]
    assert ffmpeg_fps_indices(clips["ntsc"], "1")[:3] == [14, 44, 74]


@needs_ffmpeg
def test_rotation_display_matrix(tmp_path):
    path = encode_counter_video(tmp_path / "rot.mp4", num_frames=5, size=SMALL, rotate=90)
    assert probe_video(path)["rotation"] == -90  # how ffprobe shows a phone's portrait video
    upright = ffmpeg_fps_frames(path, 25)  # the CLI applies the display matrix
    assert upright.shape == (5, 160, 120, 3)
    assert [read_counter(f) for f in upright] == list(range(5))
    with av.open(path) as c:
        stored = next(c.decode(video=0)).to_ndarray(format="rgb24")  # raw, not turned
    assert stored.shape == (120, 160, 3)
    assert counter_rotation(stored) == 270


def test_ffmpeg_missing_is_a_clear_error(monkeypatch, clips):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="not installed"):
        ffmpeg_fps_indices(clips["short"], 1)


# --------------------------------------------------------------------------- frame folders


def test_frame_folder_with_sidecar(tmp_path):
    folder = make_frame_folder(tmp_path / "vid_001", num_frames=12, fps=2.0, size=SMALL)
    names = sorted(os.listdir(folder))
    assert names[0] == "00001.jpg" and names[-1] == "00012.jpg" and len(names) == 12
    assert [read_counter(np.asarray(Image.open(os.path.join(folder, n)).convert("RGB"))) for n in names] \
        == list(range(12))
    with open(tmp_path / "vid_001.json") as f:
        assert json.load(f) == {"fps": "2.0"}


def test_frame_folder_png_no_sidecar(tmp_path):
    folder = make_frame_folder(tmp_path / "pages", num_frames=3, ext="png", size=SMALL)
    assert sorted(os.listdir(folder)) == ["00001.png", "00002.png", "00003.png"]
    assert not os.path.exists(tmp_path / "pages.json")
    make_frame_folder(tmp_path / "ntsc", num_frames=1, fps="30000/1001", size=SMALL)
    with open(tmp_path / "ntsc.json") as f:
        assert json.load(f) == {"fps": "30000/1001"}
