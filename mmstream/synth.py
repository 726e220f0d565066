"""Synthetic test media whose frames say which frame they are.

Every generated frame carries its own index as big black/white blocks that survive
lossy compression and resizing, so a test can ask any decoder for "the 1 fps
frames" and check *which* source frames came back::

    path = encode_counter_video("clip.mp4", num_frames=310, fps="25")
    assert ffmpeg_fps_indices(path, 1) == [12, 37, 62, ...]
    assert read_counter(decoded_rgb_frame) == 37

The counter layout (all positions are fractions of the frame, so a resized frame
reads the same):

* a 5 x 4 grid of cells in the box ``GRID_BOX``; cells 0..15 (row-major) are the
  16 bits of the index, most significant first; cells 16..19 hold the check value
  ``(popcount(index) + CHECK_OFFSET) % 16``, so a black, white or grey frame never
  reads as a number;
* four corner markers: the top-left one is white, the other three black. They tell
  which way up the picture is (:func:`counter_rotation`).

Depends only on PyAV, numpy and Pillow (plus the ``ffmpeg``/``ffprobe`` CLIs for
:func:`ffmpeg_fps_indices`, the ground truth).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from fractions import Fraction
from typing import Optional, Sequence, Union

import numpy as np

Rate = Union[str, int, float, Fraction]

GRID_COLS = 5
GRID_ROWS = 4
DATA_BITS = 16  # counters 0 .. 65535
CHECK_BITS = 4
CHECK_OFFSET = 5  # so that index 0 (all data cells black) still has white check cells
GRID_BOX = (0.18, 0.18, 0.82, 0.82)  # x0, y0, x1, y1 as fractions of width/height
MARKER_BOX = (0.02, 0.16)  # corner markers span [0.02, 0.16] of each side from the corner
LABEL_BOX = (0.84, 0.98)  # y-range of the human-readable "#123" label (not read back)
SAMPLE_FRACTION = 0.5  # read the mean of the central half of each cell
BLACK_MAX = 80  # a cell reads 0 when its mean luma is below this, 1 above WHITE_MIN
WHITE_MIN = 175
BACKGROUND = 128  # mid grey behind the blocks

MAX_COUNTER = (1 << DATA_BITS) - 1

# Cautious encoder settings: fast, and good enough that blocks stay readable.
_PRESET = "veryfast"


# --------------------------------------------------------------------------- layout


def _as_fraction(value: Rate) -> Fraction:
    """An exact rational from ``"30000/1001"``, ``"29.97"``, 25, 2.5 or a Fraction."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool):
        raise TypeError("a rate/time cannot be a bool")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(repr(value))  # 0.1 -> 1/10, not the binary approximation
    if isinstance(value, str):
        return Fraction(value.strip())
    return Fraction(value)


def _check_value(value: int) -> int:
    return (bin(value).count("1") + CHECK_OFFSET) % (1 << CHECK_BITS)


def counter_bits(value: int) -> list[int]:
    """The 20 cell values (row-major) that encode ``value``."""
    if not 0 <= value <= MAX_COUNTER:
        raise ValueError(f"counter {value} out of range 0..{MAX_COUNTER}")
    data = [(value >> (DATA_BITS - 1 - b)) & 1 for b in range(DATA_BITS)]
    check = _check_value(value)
    return data + [(check >> (CHECK_BITS - 1 - b)) & 1 for b in range(CHECK_BITS)]


def _edges(n: int, lo: float, hi: float, size: int) -> list[int]:
    return [int(round((lo + (hi - lo) * k / n) * size)) for k in range(n + 1)]


def _marker_spans(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    a, b = MARKER_BOX
    near = (int(round(a * size)), int(round(b * size)))
    far = (int(round((1 - b) * size)), int(round((1 - a) * size)))
    return near, far


def draw_counter(value: int, size: tuple[int, int] = (320, 240), *, label: bool = True) -> np.ndarray:
    """The upright RGB uint8 picture ``[H, W, 3]`` that carries ``value``."""
    width, height = size
    if width < 32 or height < 32:
        raise ValueError(f"frame size {size} is too small for a readable counter (min 32x32)")
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    bits = counter_bits(value)
    xs = _edges(GRID_COLS, GRID_BOX[0], GRID_BOX[2], width)
    ys = _edges(GRID_ROWS, GRID_BOX[1], GRID_BOX[3], height)
    for j, bit in enumerate(bits):
        r, c = divmod(j, GRID_COLS)
        img[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = 255 if bit else 0
    (x0, x1), (x2, x3) = _marker_spans(width)
    (y0, y1), (y2, y3) = _marker_spans(height)
    img[y0:y1, x0:x1] = 255  # top-left: white
    img[y0:y1, x2:x3] = 0
    img[y2:y3, x0:x1] = 0
    img[y2:y3, x2:x3] = 0
    if label and height >= 96:
        _draw_label(img, f"#{value}")
    return img


def _draw_label(img: np.ndarray, text: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    height, width = img.shape[:2]
    top, bottom = (int(LABEL_BOX[0] * height), int(LABEL_BOX[1] * height))
    strip = Image.fromarray(img[top:bottom])
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=max(8, (bottom - top) * 3 // 4))
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    draw.text((width // 2, (bottom - top) // 2), text, fill=(255, 255, 255), font=font, anchor="mm")
    img[top:bottom] = np.asarray(strip)


# --------------------------------------------------------------------------- reading


def _luma(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] >= 3:
        f = frame[..., :3].astype(np.float32)
        return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    if frame.ndim == 2:
        return frame.astype(np.float32)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[..., 0].astype(np.float32)
    raise ValueError(f"expected an RGB frame [H, W, 3], got shape {frame.shape}")


def _patch_mean(luma: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    """Mean of the central SAMPLE_FRACTION of the box given in fractions of the frame."""
    height, width = luma.shape
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = (x1 - x0) * SAMPLE_FRACTION / 2, (y1 - y0) * SAMPLE_FRACTION / 2
    a, b = int(math.floor((cx - hx) * width)), int(math.ceil((cx + hx) * width))
    c, d = int(math.floor((cy - hy) * height)), int(math.ceil((cy + hy) * height))
    a, c = max(a, 0), max(c, 0)
    b, d = max(b, a + 1), max(d, c + 1)
    return float(luma[c:d, a:b].mean())


def _level(mean: float, what: str) -> int:
    if mean < BLACK_MAX:
        return 0
    if mean > WHITE_MIN:
        return 1
    raise ValueError(f"not a counter frame: {what} is neither black nor white (mean luma {mean:.0f})")


def _corner_levels(luma: np.ndarray) -> list[int]:
    """Marker levels in the order top-left, top-right, bottom-right, bottom-left."""
    a, b = MARKER_BOX
    boxes = [(a, b, a, b), (1 - b, 1 - a, a, b), (1 - b, 1 - a, 1 - b, 1 - a), (a, b, 1 - b, 1 - a)]
    return [_level(_patch_mean(luma, *box), "a corner marker") for box in boxes]


def counter_rotation(frame: np.ndarray) -> int:
    """Degrees (0, 90, 180, 270) the counter picture in ``frame`` is turned clockwise.

    0 means upright. ``np.rot90(frame, k=counter_rotation(frame) // 90)`` turns it
    back upright. Raises ValueError when the corner markers are not readable.
    """
    levels = _corner_levels(_luma(frame))
    if sum(levels) != 1:
        raise ValueError(f"not a counter frame: corner markers read {levels}, expected one white corner")
    return 90 * levels.index(1)


def read_counter(frame: np.ndarray, *, any_rotation: bool = False) -> int:
    """The index drawn into an RGB uint8 frame ``[H, W, 3]`` (any size, any decoder).

    Raises ValueError when a cell is unreadable, the check cells disagree, or the
    picture is not upright (pass ``any_rotation=True`` to read a turned picture too).
    """
    luma = _luma(frame)
    turned = counter_rotation(luma)
    if turned:
        if not any_rotation:
            raise ValueError(f"counter picture is turned {turned} degrees clockwise, not upright")
        luma = np.rot90(luma, k=turned // 90)
    x0, y0, x1, y1 = GRID_BOX
    cw, ch = (x1 - x0) / GRID_COLS, (y1 - y0) / GRID_ROWS
    bits = []
    for j in range(DATA_BITS + CHECK_BITS):
        r, c = divmod(j, GRID_COLS)
        mean = _patch_mean(luma, x0 + c * cw, x0 + (c + 1) * cw, y0 + r * ch, y0 + (r + 1) * ch)
        bits.append(_level(mean, f"cell {j}"))
    value = int("".join(map(str, bits[:DATA_BITS])), 2)
    check = int("".join(map(str, bits[DATA_BITS:])), 2)
    if check != _check_value(value):
        raise ValueError(f"counter check failed: read {value} with check {check}, expected {_check_value(value)}")
    return value


# --------------------------------------------------------------------------- encoding


def _time_base(times: Sequence[Fraction], fallback: Fraction) -> Fraction:
    """The coarsest 1/N time base in which every time is a whole number of ticks."""
    den = 1
    for t in times:
        den = den * t.denominator // math.gcd(den, t.denominator)
    g = 0
    for t in times:
        g = math.gcd(g, int(t * den))
    if g == 0:
        return fallback
    return Fraction(1, Fraction(g, den).denominator)


def _encoder_setup(codec: str, gop: Optional[int], bframes: Optional[int]) -> tuple[dict, dict]:
    """(codec options, codec-context attributes) for one encoder."""
    options: dict[str, str] = {}
    attrs: dict[str, object] = {}
    if gop is not None:
        attrs["gop_size"] = int(gop)
    if bframes is not None:
        attrs["max_b_frames"] = int(bframes)
    if codec == "libx264":
        params = []
        options["preset"] = _PRESET
        if gop is not None:
            params += [f"keyint={gop}", f"min-keyint={max(1, min(gop, 25))}", "scenecut=0"]
        if bframes is not None:
            params += [f"bframes={bframes}", "b-adapt=0"]
        if params:
            options["x264-params"] = ":".join(params)
    elif codec == "libx265":
        params = ["log-level=error"]
        options["preset"] = _PRESET
        if gop is not None:
            params += [f"keyint={gop}", f"min-keyint={max(1, min(gop, 25))}", "scenecut=0"]
        if bframes is not None:
            params += [f"bframes={bframes}", "b-adapt=0"]
        options["x265-params"] = ":".join(params)
    elif codec == "libvpx-vp9":
        if bframes:
            raise ValueError("libvpx-vp9 has no B-frames (bframes must be None or 0)")
        attrs.pop("max_b_frames", None)
        options.update({"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0", "row-mt": "1"})
        if gop is not None:
            options["keyint_min"] = str(gop)
    elif codec == "mpeg4":
        attrs["bit_rate"] = 2_000_000
    return options, attrs


def encode_counter_video(
    path: Union[str, os.PathLike],
    *,
    num_frames: int,
    fps: Rate = "25",
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    gop: Optional[int] = None,
    bframes: Optional[int] = None,
    start_pts_seconds: Rate = 0,
    pix_fmt: str = "yuv420p",
    rotate: Optional[int] = None,
    color: Optional[tuple[int, int, int]] = None,
    pts_list: Optional[Sequence[Rate]] = None,
    options: Optional[dict[str, str]] = None,
) -> str:
    """Encode ``num_frames`` counter frames (frame i shows i) to ``path`` with PyAV.

    ``fps`` is exact (``"30000/1001"`` is 29.97); frame i is at
    ``start_pts_seconds + i / fps``. ``pts_list`` gives every frame's time in seconds
    instead (variable frame rate; it must increase). ``size`` is the stored (coded)
    width x height. ``gop`` fixes the key-frame interval (scene cuts off), ``bframes``
    the number of consecutive B-frames (x264/x265/mpeg4; None: the encoder's
    default). ``rotate`` (90, 180, 270) stores a display matrix telling players to
    turn the stored picture that many degrees clockwise, like a phone video; the
    stored pixels are pre-turned so the *displayed* frame is an upright counter.
    ``color=(r, g, b)`` draws every frame as that solid colour instead of a counter.
    The container follows the file extension (``.mp4``, ``.mkv``, ``.webm``, ...).
    """
    import av

    path = os.fspath(path)
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if num_frames - 1 > MAX_COUNTER:
        raise ValueError(f"at most {MAX_COUNTER + 1} counter frames")
    width, height = size
    if pix_fmt in ("yuv420p", "yuv422p", "yuv420p10le", "nv12") and (width % 2 or height % 2):
        raise ValueError(f"{pix_fmt} needs an even width and height, got {size}")
    turn = int(rotate or 0) % 360
    if turn not in (0, 90, 180, 270):
        raise ValueError(f"rotate must be 0, 90, 180 or 270, got {rotate}")

    if pts_list is not None:
        if _as_fraction(start_pts_seconds) != 0:
            raise ValueError("give either pts_list (absolute times) or start_pts_seconds, not both")
        times = [_as_fraction(t) for t in pts_list]
        if len(times) != num_frames:
            raise ValueError(f"pts_list has {len(times)} times for {num_frames} frames")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError("pts_list must be strictly increasing")
        last_gap = times[-1] - times[-2] if num_frames > 1 else Fraction(1, 25)
        span = times[-1] - times[0]
        rate = Fraction(num_frames - 1) / span if span > 0 else Fraction(25)
        rate = rate.limit_denominator(1001)
    else:
        rate = _as_fraction(fps)
        if rate <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        start = _as_fraction(start_pts_seconds)
        times = [start + Fraction(i) / rate for i in range(num_frames)]
        last_gap = 1 / rate
    if times[0] < 0:
        raise ValueError("timestamps must be >= 0")
    tb = _time_base(times + [last_gap], Fraction(1) / rate)
    if tb.denominator > 2**31 - 1 or (codec == "mpeg4" and tb.denominator > 65535):
        tb = Fraction(1, 90000 if codec != "mpeg4" else 60000)
    ticks = [int(round(t / tb)) for t in times]
    duration = max(1, int(round(last_gap / tb)))

    enc_options, attrs = _encoder_setup(codec, gop, bframes)
    enc_options.update(options or {})
    display_size = (height, width) if turn in (90, 270) else (width, height)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=rate, options=enc_options, time_base=tb)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        cc = stream.codec_context
        cc.time_base = tb
        for name, value in attrs.items():
            setattr(cc, name, value)
        if turn:
            # PyAV's degrees are counter-clockwise (what players undo): a stored
            # picture to be shown turned 90 clockwise carries a -90 rotation.
            stream.set_display_rotation(-turn)
        solid = None
        if color is not None:
            solid = np.empty((height, width, 3), np.uint8)
            solid[:] = np.asarray(color, np.uint8)
        for i in range(num_frames):
            if solid is not None:
                rgb = solid
            else:
                rgb = draw_counter(i, display_size)
                if turn:
                    # stored = displayed turned back: players turn it `turn` degrees clockwise
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=turn // 90))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = ticks[i]
            frame.time_base = tb
            frame.duration = duration if i == num_frames - 1 else ticks[i + 1] - ticks[i]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# --------------------------------------------------------------------------- frame folders


def make_frame_folder(
    folder: Union[str, os.PathLike],
    *,
    num_frames: int,
    fps: Optional[Rate] = None,
    ext: str = "jpg",
    size: tuple[int, int] = (320, 240),
    digits: int = 5,
    first_number: int = 1,
) -> str:
    """Write counter frames ``00001.jpg ...`` (sorted names are time order) into ``folder``.

    Frame i (0-based, the i-th sorted name) shows counter i. With ``fps`` the
    sidecar ``<folder>.json`` = ``{"fps": "2.0"}`` goes next to the folder (REFERENCE
    section 1): numbers are written as ``str(float(fps))``, strings as given.
    """
    from PIL import Image

    folder = os.fspath(folder).rstrip("/\\")
    os.makedirs(folder, exist_ok=True)
    ext = ext.lstrip(".").lower()
    for i in range(num_frames):
        img = Image.fromarray(draw_counter(i, size))
        name = os.path.join(folder, f"{i + first_number:0{digits}d}.{ext}")
        if ext in ("jpg", "jpeg"):
            img.save(name, quality=90)
        else:
            img.save(name)
    if fps is not None:
        text = fps.strip() if isinstance(fps, str) else str(float(fps))
        with open(folder + ".json", "w", encoding="utf-8") as f:
            json.dump({"fps": text}, f)
    return folder


# --------------------------------------------------------------------------- ground truth


def _need(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise RuntimeError(f"the {tool} command-line tool is not installed (apt-get install ffmpeg); "
                           f"it is the ground truth for frame selection tests")
    return exe


def probe_video(path: Union[str, os.PathLike]) -> dict:
    """ffprobe's view of the first video stream plus the format's ``start_time``.

    Returns ``{"width", "height", "rotation", "start_time", "codec_name", "nb_frames"}``
    where ``rotation`` is ffprobe's display-matrix angle (-90 for a phone video).
    """
    exe = _need("ffprobe")
    cmd = [exe, "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=width,height,codec_name,nb_frames,start_time:stream_side_data=rotation:"
           "stream_tags=rotate:format=start_time", "-of", "json", os.fspath(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ffprobe failed on {path}: {res.stderr.strip()}")
    data = json.loads(res.stdout)
    if not data.get("streams"):
        raise RuntimeError(f"ffprobe found no video stream in {path}")
    st = data["streams"][0]
    rotation = 0
    for sd in st.get("side_data_list", []) or []:
        if "rotation" in sd:
            rotation = int(round(float(sd["rotation"])))
    if not rotation and "rotate" in (st.get("tags") or {}):
        rotation = -int(st["tags"]["rotate"])
    start = data.get("format", {}).get("start_time", st.get("start_time"))
    return {
        "width": int(st["width"]),
        "height": int(st["height"]),
        "rotation": rotation,
        "start_time": float(start) if start not in (None, "N/A") else None,
        "codec_name": st.get("codec_name"),
        "nb_frames": int(st["nb_frames"]) if str(st.get("nb_frames", "")).isdigit() else None,
    }


def ffmpeg_fps_frames(path: Union[str, os.PathLike], fps: Rate) -> np.ndarray:
    """The frames ``ffmpeg -i PATH -vf fps=F`` extracts, as RGB uint8 ``[T, H, W, 3]``.

    Like the seed recipe, the CLI turns rotated videos upright.
    """
    exe = _need("ffmpeg")
    info = probe_video(path)
    width, height = info["width"], info["height"]
    if info["rotation"] % 180:
        width, height = height, width
    rate = fps if isinstance(fps, str) else str(_as_fraction(fps))
    cmd = [exe, "-nostdin", "-v", "error", "-i", os.fspath(path), "-map", "0:v:0", "-vf", f"fps={rate}",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {res.stderr.decode(errors='replace').strip()}")
    frame_bytes = width * height * 3
    if len(res.stdout) % frame_bytes:
        raise RuntimeError(f"ffmpeg output ({len(res.stdout)} bytes) is not a whole number of "
                           f"{width}x{height} RGB frames")
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, height, width, 3)


def ffmpeg_fps_indices(path: Union[str, os.PathLike], fps: Rate) -> list[int]:
    """The counters of the frames ``ffmpeg -vf fps=F`` picks from a counter video.

    The ground truth frame-selection tests compare against (REFERENCE section 2).
    """
    return [read_counter(f) for f in ffmpeg_fps_frames(path, fps)]


def decode_counters(path: Union[str, os.PathLike]) -> list[tuple[float, int]]:
    """(timestamp in seconds, counter) of every frame PyAV decodes, in presentation order."""
    import av

    out = []
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else float("nan")
            out.append((t, read_counter(frame.to_ndarray(format="rgb24"))))
    return out


__all__ = [
    "encode_counter_video", "read_counter", "counter_rotation", "draw_counter", "counter_bits",
    "make_frame_folder", "ffmpeg_fps_indices", "ffmpeg_fps_frames", "probe_video", "decode_counters",
    "MAX_COUNTER",
]
