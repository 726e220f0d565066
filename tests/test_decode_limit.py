"""benchmarks/decode_limit.py's frame-set logic on small synthetic clips: which frames exact
sampling cannot skip, checked against FFmpeg's own decoder (the frames it decodes from only
those packets are bit-identical to a full decode; leaving one more out changes a target),
and mmstream's PyAV reader decoding no frame outside that set. No timing is asserted."""
import os
import sys

import av
import numpy as np
import pytest

from mmstream import timing
from mmstream.media.backends.pyav import PyAVBackend
from mmstream.media.probe import probe_video
from mmstream.synth import encode_counter_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
try:
    import decode_limit as dl
finally:
    sys.path.pop(0)

X265 = "log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:b-adapt=0"
CLIPS = {  # 96x64, a few hundred frames each: seconds to encode
    "h264_bframes": dict(num_frames=160, codec="libx264", gop=40, bframes=3),
    "h264_no_bframes": dict(num_frames=90, codec="libx264", gop=30, bframes=0),
    # x265's default open GOPs: CRA key frames whose leading pictures reference the GOP before
    "hevc_open_gop": dict(num_frames=160, codec="libx265", options={"x265-params": X265.format(gop=40)}),
    "hevc_temporal_layers": dict(num_frames=120, codec="libx265", options={
        "x265-params": X265.format(gop=40) + ":temporal-layers=3"}),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("limit_clips")
    return {name: encode_counter_video(root / f"{name}.mp4", size=(96, 64), fps="25", **kw)
            for name, kw in CLIPS.items()}


def full_decode(path):
    """{pts: RGB} of every frame, decoded plainly."""
    with av.open(path) as c:
        return {f.pts: f.to_ndarray(format="rgb24") for f in c.decode(video=0)}


def nonref_skipping_output(path):
    """pts of the frames FFmpeg's decoder still outputs when told to skip non-reference frames."""
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        return {f.pts for f in c.decode(s)}


def target_sets(packets):
    pts = sorted(p.pts for p in packets)
    n = len(pts)
    return [pts, pts[12::25], [pts[n - 1]], [pts[0]], [pts[5], pts[6]],
            [pts[round(i * (n - 1) / 7)] for i in range(8)], [pts[3], pts[41], pts[42], pts[n - 2]]]


def test_reference_flags_agree_with_the_decoder(clips):
    for name in ("h264_bframes", "h264_no_bframes", "hevc_open_gop"):
        packets, codec = dl.packet_index(clips[name])
        ours = {p.pts for p in packets if p.ref}
        assert ours == nonref_skipping_output(clips[name]), name  # FFmpeg skips exactly our non-references
        assert all(p.ref for p in packets if p.key)
        if name != "h264_no_bframes":
            assert 0 < len(ours) < len(packets)  # B-frames: some frames are nobody's reference
    # temporal sub-layers: FFmpeg's NONREF drops every sub-layer non-reference picture,
    # but only those of the highest sub-layer are nobody's reference
    packets, _ = dl.packet_index(clips["hevc_temporal_layers"])
    ours = {p.pts for p in packets if p.ref}
    assert nonref_skipping_output(clips["hevc_temporal_layers"]) < ours < {p.pts for p in packets}


def test_nal_units_read_length_prefixed_and_annex_b():
    nals = [b"\x65\x88\x84", b"\x41\x9a\x00\x01", b"\x01\x02"]
    prefixed = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
    annex_b = b"".join((b"\0\0\0\1" if i == 0 else b"\0\0\1") + n for i, n in enumerate(nals))
    assert [bytes(n) for n in dl.nal_units(prefixed, 4)] == nals
    assert [bytes(n) for n in dl.nal_units(annex_b, 0)] == nals
    assert dl.h264_is_reference(len(b"\x01\x9a").to_bytes(4, "big") + b"\x01\x9a", 4) is False  # nal_ref_idc 0
    assert dl.h264_is_reference(prefixed, 4) is True
    assert dl.h264_is_reference(b"", 4) is True  # nothing understood: never skipped


@pytest.mark.parametrize("name", list(CLIPS))
def test_decoding_only_the_needed_packets_gives_the_targets_bit_exact(clips, name):
    path = clips[name]
    packets, _ = dl.packet_index(path)
    full = full_decode(path)
    for targets in target_sets(packets):
        needed = dl.needed_packets(packets, targets)
        assert {packets[i].pts for i in needed} >= set(targets)
        got = dl.decode_exactly(path, needed, packets, keep_frames=set(targets))
        assert got["packets"] == len(needed)
        for t in targets:
            assert np.array_equal(got["frames"][t], full[t]), f"{name}: target pts {t}"


def test_needed_set_leaves_out_what_no_target_depends_on(clips):
    packets, _ = dl.packet_index(clips["h264_bframes"])  # key frame every 40 frames
    pts = sorted(p.pts for p in packets)
    decode_index = {p.pts: i for i, p in enumerate(packets)}
    targets = [pts[13], pts[95]]  # in the first GOP and the third
    needed = dl.needed_packets(packets, targets)
    assert all(packets[i].ref or packets[i].pts in targets for i in needed)  # no other non-reference frame
    assert all(i <= decode_index[pts[13]] for i in needed if packets[i].pts < pts[40])  # GOP 1 stops at its target
    assert not any(pts[40] <= packets[i].pts < pts[80] for i in needed)  # GOP 2 holds no target: left out
    third = min(i for i in needed if packets[i].pts >= pts[80])
    assert third == decode_index[pts[80]] and packets[third].key  # GOP 3 starts at its key frame
    assert max(needed) == decode_index[pts[95]]  # nothing after the last target
    assert len(dl.runs(needed, packets)) == 2


def test_leaving_out_one_more_reference_changes_a_target(clips):
    path = clips["h264_bframes"]
    packets, _ = dl.packet_index(path)
    full = full_decode(path)
    pts = sorted(p.pts for p in packets)
    target = pts[30]
    needed = dl.needed_packets(packets, [target])
    d = {p.pts: i for i, p in enumerate(packets)}[target]
    before = [i for i in needed if i < d]
    assert len(before) >= 3
    for drop in (before[0], before[-1]):  # the key frame; the reference decoded last before the target
        fewer = [i for i in needed if i != drop]
        got = dl.decode_exactly(path, fewer, packets, keep_frames={target})["frames"]
        assert target not in got or not np.array_equal(got[target], full[target])


@pytest.mark.parametrize("name", ["h264_bframes", "h264_no_bframes", "hevc_open_gop"])
def test_mmstream_decodes_no_frame_outside_the_needed_set(clips, name):
    """mmstream's reader sends packets from each segment's key frame to its last target and
    lets the decoder skip the non-reference frames that are not targets, so the frames it
    decodes are the limit's set."""
    path = clips[name]
    info = probe_video(path)
    packets, _ = dl.packet_index(path)
    for targets in target_sets(packets):
        positions = sorted(info.pts.index(t) for t in targets)
        needed = dl.needed_packets(packets, targets)
        timing.enable()
        timing.reset()
        try:
            got = PyAVBackend().read(path, info, positions, (96, 64))
            decoded = timing.snapshot()["counts"].get("decoded_frames", 0)
        finally:
            timing.enable(False)
        assert sorted(got) == positions
        if name.startswith("h264"):
            assert decoded == len(needed)
        else:  # the needed set counts the leading pictures fed after a reset, which FFmpeg drops unread
            assert decoded <= len(needed)
