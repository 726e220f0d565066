"""Media whose headers declare a huge picture are ``too_large``, refused from the probe before
any frame buffer is allocated, with every decoder, for videos, images and frame folders
(issue 22, item 3): the process does not grow, where believing the headers kept the H.264
stream (decoded garbage, +1.1 GB), the PNG (+0.6 GB) and the frame folder (+1.7 GB)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from hostile_media import lying_h264, mkv_declaring, png_declaring
from mmstream import StreamingDataset
from mmstream.errors import TOO_LARGE
from mmstream.synth import encode_counter_video
from mmstream.types import Drop, Sample

pytestmark = pytest.mark.timeout(180)

HOSTILE = {  # record id -> (media field, what it declares)
    "sps_12288": ("video", "sps_12288.mkv"),  # H.264 SPS (and so its track header): 12288 x 12288
    "mkv_65535": ("video", "mkv_65535.mkv"),  # Matroska track header: 65535 x 65535, pictures 256 x 256
    "png_65535": ("image", "png_65535.png"),  # PNG IHDR 65535 x 65535 (over PIL's own bound)
    "png_12288": ("image", "png_12288.png"),  # PNG of 12288 x 12288 grey zeros, 150 KB (under PIL's bound)
    "folder_first": ("video", "folder_first"),  # frame folder whose first frame declares 12288 x 12288
    "folder_later": ("video", "folder_later"),  # ... whose third frame does (the plan reads only the first)
}


def _record(rid: str, field: str, path: str) -> dict:
    tag = "<image>" if field == "image" else "<video>"
    return {"id": rid, field: path, "conversations": [{"from": "human", "value": f"{tag}\nWhat is it?"},
                                                      {"from": "gpt", "value": rid}]}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    lying_h264(root / "sps_12288.mkv", 768, 768)
    mkv_declaring(root / "mkv_65535.mkv", 65535, 65535)
    png_declaring(root / "png_65535.png", 65535, 65535)
    bomb = png_declaring(root / "png_12288.png", 12288, 12288, filled=True).read_bytes()  # 150 MB of pixels
    for name, big in (("folder_first", 0), ("folder_later", 2)):
        (root / name).mkdir()
        for i in range(4):
            frame = root / name / f"{i:03d}.png"
            frame.write_bytes(bomb) if i == big else Image.new("RGB", (64, 48)).save(frame)
    encode_counter_video(root / "good.mp4", num_frames=10, size=(64, 48))
    lines = [_record(rid, field, path) for rid, (field, path) in HOSTILE.items()]
    lines.append(_record("good", "video", "good.mp4"))
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / "good.jsonl").write_text(json.dumps(_record("good", "video", "good.mp4")) + "\n")
    return root


def _config(root: Path, annotations: str, decoder: str, supervised: bool) -> dict:
    sampling = {"fps": 2, "max_frames": 4, "decoder": decoder}
    if not supervised:
        sampling["decode_timeout"] = None  # decode in this process: its memory is what is measured
    return {"sources": [{"name": "s", "format": "llava", "annotations": str(root / annotations),
                         "media_root": str(root)}], "sampling": sampling, "loader": {"shuffle": False}}


_MEASURE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from test_hostile_media import _config
    from mmstream import StreamingDataset
    from pathlib import Path

    def peak_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))

    root, decoders = Path(sys.argv[1]), sys.argv[3:]
    for decoder in decoders:  # every decoder loaded and used once, so that only the hostile files count
        assert len(list(StreamingDataset(_config(root, "good.jsonl", decoder, False)))) == 1
    before, out = peak_mb(), {}
    for decoder in decoders:
        items = StreamingDataset(_config(root, "ann.jsonl", decoder, False), emit_drops=True)
        out[decoder] = {i.key: getattr(i, "reason", "kept") for i in items}
    print(json.dumps({"reasons": out, "grew_mb": peak_mb() - before}))
""")


def test_declared_huge_pictures_are_refused_before_allocation_by_every_decoder(hostile):
    decoders = ["pyav", "decord", "torchcodec"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(hostile), str(Path(__file__).parent), *decoders],
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {f"s-{i:08d}": TOO_LARGE for i in range(len(HOSTILE))} | {f"s-{len(HOSTILE):08d}": "kept"}
    assert got["reasons"] == {d: expected for d in decoders}
    assert got["grew_mb"] < 150, got["grew_mb"]  # FFmpeg's H.264 tables for the declared size: about 50 MB


def test_too_large_crosses_the_decode_helper_and_names_the_size(hostile):
    items = list(StreamingDataset(_config(hostile, "ann.jsonl", "auto", True), emit_drops=True))
    drops = {d.key: d for d in items if isinstance(d, Drop)}
    assert [d.reason for d in drops.values()] == [TOO_LARGE] * len(HOSTILE)
    assert "12288x12288" in drops["s-00000000"].message and "65535x65535" in drops["s-00000001"].message
    assert drops["s-00000005"].path.endswith("002.png")  # the frame that declares it
    assert sum(isinstance(i, Sample) for i in items) == 1


def test_the_limit_is_a_knob(hostile):
    config = _config(hostile, "ann.jsonl", "pyav", True)
    config["sampling"]["max_source_pixels"] = 64 * 47  # the good 64 x 48 video is over it too
    reasons = [getattr(i, "reason", "kept") for i in StreamingDataset(config, emit_drops=True)]
    assert reasons == [TOO_LARGE] * (len(HOSTILE) + 1)
