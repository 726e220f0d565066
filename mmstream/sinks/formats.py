"""Sample -> what goes on disk, one function per output flavour.

``encoder_for(config.output)`` returns a callable ``Sample -> Encoded``. The writer
(:mod:`.shards`) never looks inside a sample; it stores what the encoder made:

* ``megatron`` (Pai-Megatron-Patch ChatML, REFERENCE 6): tar members ``KEY.jpgs``
  (pickled list of JPEG bytes, one per image), ``KEY.videos`` (pickled list of lists
  of JPEG bytes, one inner list per video, an even number of frames each) and
  ``KEY.json`` (the model record: ``conversations`` + ``second_per_grid_ts``, plus the
  sample's exact ``tokens`` when a tokenizer is configured). All three are always written.
* ``minicpmv`` / ``idefics3``, layout ``wds``: one JPEG member per frame, named after
  the frame's file in the model record (``KEY.00000.jpg`` for ``KEY/00000.jpg``), plus
  ``KEY.json`` holding the model record unchanged.
* ``minicpmv`` / ``idefics3``, layout ``files``: the frames as files
  ``images/<group>/<n>.jpg``, written once per decode group, and the record with its
  ``image`` paths pointing at them (relative to the output folder here; made absolute
  when the JSON list is assembled, see :mod:`.manifest`).

A decode group's frames are JPEG-encoded once for all its samples
(:class:`SampleEncoder`).

Frames are uint8 RGB ``[T, H, W, 3]``; grey and RGBA frames are converted (RGBA is
composited on white, as Qwen's ``to_rgb`` does), so colours are stored as RGB, never
BGR, and an alpha channel never crashes the encoder.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..config import OutputConfig
from ..errors import MEDIA_TAG_MISMATCH, ConfigError, MmstreamError, SampleError
from ..types import IMAGE_TAG, VIDEO_TAG, Sample
from .atomic import dump_json

FORMATS = ("megatron", "minicpmv", "idefics3")
LAYOUTS = ("wds", "files")
#: How frames are stored (``output.options.image_format``); png is lossless, for the files layout.
IMAGE_FORMATS = ("jpeg", "png")

#: Qwen2-VL merges this many frames into one temporal patch; Pai's converter and the
#: Qwen processor both need a video's frame count to be a multiple of it.
TEMPORAL_PATCH_SIZE = 2
#: Pickle protocol of the ``.jpgs``/``.videos`` members (readable by Python >= 3.4).
PICKLE_PROTOCOL = 4
#: Folder (inside the output folder) that holds the frames of the ``files`` layout.
IMAGES_DIR = "images"

_KEY_BAD = re.compile(r"[./\\\s]")
_MEMBER_OK = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9]+$")


@dataclass
class Encoded:
    """One sample ready for a writer.

    ``members`` are tar members ``KEY.<ext>`` as ``(ext, bytes)``; ``files`` are
    ``(path relative to the output folder, bytes)`` and ``record`` the JSON record of
    the ``files`` layout.
    """

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    record: Optional[dict[str, Any]] = None
    source: str = ""



def check_output(output: OutputConfig) -> None:
    """Reject an output section this module cannot write (at start-up)."""
    if output.format not in FORMATS:
        raise ConfigError(f"output.format: {output.format!r} is not one of {FORMATS}")
    if output.layout not in LAYOUTS:
        raise ConfigError(f"output.layout: {output.layout!r} is not one of {LAYOUTS}")
    if output.format == "megatron" and output.layout != "wds":
        raise ConfigError("output.layout: megatron shards are always tar files; use layout: wds")
    if not isinstance(output.maxcount, int) or output.maxcount < 1:
        raise ConfigError(f"output.maxcount: must be a positive integer (got {output.maxcount!r})")
    if not 1 <= int(output.jpeg_quality) <= 100:
        raise ConfigError(f"output.jpeg_quality: must be 1..100 (got {output.jpeg_quality!r})")
    fmt = (output.options or {}).get("image_format", "jpeg")
    if fmt not in IMAGE_FORMATS:
        raise ConfigError(f"output.options.image_format: {fmt!r} is not one of {IMAGE_FORMATS}")
    if fmt != "jpeg" and (output.format == "megatron" or output.layout != "files"):
        raise ConfigError("output.options.image_format: png is for the files layout (megatron and wds shards "
                          "store JPEG, as their readers expect)")


def encoder_for(output: OutputConfig) -> "SampleEncoder":
    """The ``Sample -> Encoded`` callable for this output section."""
    return SampleEncoder(output)


class SampleEncoder:
    """``Sample -> Encoded`` for one output section, encoding a decode group's frames once.

    Samples of one group share their clips (:attr:`Sample.group`); the JPEGs of the
    last group seen are kept, so its other samples reuse them. In the ``files`` layout
    the frames are files ``images/<group>/<n>.jpg`` that every record of the group
    names; only the group's first sample seen here carries their bytes.
    """

    def __init__(self, output: OutputConfig):
        check_output(output)
        self.output = output
        self.quality = int(output.jpeg_quality)
        self.png = (output.options or {}).get("image_format", "jpeg") == "png"
        self._clips: Optional[list] = None  # the clips the cached JPEGs belong to (kept alive)
        self._images: list[list[bytes]] = []
        self._files_sent = False  # files layout: an Encoded carrying this group's frame files went out

    def images(self, sample: Sample) -> tuple[list[list[bytes]], bool]:
        """One list of encoded frames (JPEG, or PNG) per clip, and whether they were encoded just now."""
        if self._clips is not None and len(self._clips) == len(sample.clips) and \
                all(a.frames is b.frames for a, b in zip(self._clips, sample.clips)):
            return self._images, False
        encode = encode_png if self.png else (lambda f: encode_jpeg(f, self.quality))
        self._images = [[encode(f) for f in clip.frames] for clip in sample.clips]
        self._clips = list(sample.clips)
        return self._images, True

    def __call__(self, sample: Sample) -> Encoded:
        images, fresh = self.images(sample)
        if fresh:
            self._files_sent = False
        if self.output.format == "megatron":
            return encode_megatron(sample, images)
        if self.output.layout == "wds":
            return encode_minicpmv_wds(sample, images)
        encoded = encode_minicpmv_files(sample, images, with_files=not self._files_sent,
                                        ext=".png" if self.png else None)
        self._files_sent = True
        return encoded


# -- frames -------------------------------------------------------------------------

def to_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB from grey ``[H, W]``/``[H, W, 1]``, RGB or RGBA."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise SampleError("decode_error", f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise SampleError("decode_error", f"a frame must be [H, W, C], got shape {frame.shape}")
    channels = frame.shape[2]
    if channels == 3:
        return frame
    if channels == 1:
        return np.repeat(frame, 3, axis=2)
    if channels == 4:  # composite on white, like qwen-vl-utils' to_rgb
        alpha = frame[:, :, 3:4].astype(np.uint16)
        rgb = frame[:, :, :3].astype(np.uint16)
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    raise SampleError("decode_error", f"a frame must have 1, 3 or 4 channels, got {channels}")


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of one RGB frame (PIL, so channel order is RGB)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_rgb(frame)), mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(frame: np.ndarray) -> bytes:
    """PNG bytes of one RGB frame: lossless (what T2Vid's ffmpeg extraction writes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_rgb(frame)), mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_key(key: str) -> str:
    if not key or _KEY_BAD.search(key):
        raise MmstreamError(f"sample key {key!r} cannot name a WebDataset sample (no dots, slashes or spaces)")
    return key


def _model_record(sample: Sample, fmt: str) -> dict[str, Any]:
    rec = sample.model_record
    if not isinstance(rec, dict):
        raise MmstreamError(
            f"output.format {fmt!r} writes the model's training record, but sample {sample.key!r} has "
            f"none: configure a `model:` section (a Qwen2-VL family model for megatron, MiniCPM-V or "
            f"Idefics3 for minicpmv/idefics3)")
    return rec


# -- megatron (Pai-Megatron-Patch ChatML) -------------------------------------------

def encode_megatron(sample: Sample, images: list[list[bytes]]) -> Encoded:
    """``images``: the JPEG bytes of each clip's frames (:meth:`SampleEncoder.images`)."""
    key = check_key(sample.key)
    rec = _model_record(sample, "megatron")
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not all(isinstance(t, dict) and "from" in t and "value" in t for t in convs):
        raise MmstreamError(
            f"output.format 'megatron' needs a ChatML record ({{'conversations': [{{'from', 'value'}}]}}); "
            f"sample {key!r} has keys {sorted(rec)}: is the configured model a Qwen2-VL family model?")
    videos = [c for c in sample.clips if c.kind != "image"]
    text = "".join(str(t["value"]) for t in convs)
    n_img, n_vid = text.count(IMAGE_TAG), text.count(VIDEO_TAG)
    n_img_frames = sum(c.num_frames for c in sample.clips if c.kind == "image")
    if n_img != n_img_frames or n_vid != len(videos):
        raise SampleError(MEDIA_TAG_MISMATCH,
                          f"conversation has {n_img} {IMAGE_TAG} and {n_vid} {VIDEO_TAG} tags, sample has "
                          f"{n_img_frames} image(s) and {len(videos)} video(s)", key=key)
    sgt = rec.get("second_per_grid_ts", [])
    if videos and (not isinstance(sgt, (list, tuple)) or len(sgt) != len(videos)):
        raise MmstreamError(f"sample {key!r}: second_per_grid_ts must have one entry per video "
                            f"({len(videos)}), got {sgt!r}")
    jpgs = [j for c, js in zip(sample.clips, images) if c.kind == "image" for j in js]
    vids = []
    for clip, js in zip(sample.clips, images):
        if clip.kind == "image":
            continue
        if clip.num_frames == 0:
            raise SampleError("no_frames", "video has no frames", key=key, path=clip.path)
        # an even count: the last frame repeated, as the Qwen2-VL processor pads
        vids.append(js + js[-1:] * ((-len(js)) % TEMPORAL_PATCH_SIZE))
    out = dict(rec)
    out["second_per_grid_ts"] = [float(x) for x in sgt]
    if sample.tokens is not None:
        out["tokens"] = dict(sample.tokens)  # {"text", "visual", "total"}: what a packer needs, without decoding
    return Encoded(key=key, members=[
        ("jpgs", pickle.dumps(jpgs, protocol=PICKLE_PROTOCOL)),
        ("videos", pickle.dumps(vids, protocol=PICKLE_PROTOCOL)),
        ("json", dump_json(out)),
    ])


# -- minicpmv / idefics3 ------------------------------------------------------------

def _image_map(sample: Sample, fmt: str = "minicpmv") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The record and its ``(tag, relative path)`` pairs, checked against the frames."""
    rec = _model_record(sample, fmt)
    image = rec.get("image", {})
    if isinstance(image, str):
        pairs = [("<image>", image)]
    elif isinstance(image, dict):
        pairs = [(str(k), str(v)) for k, v in image.items()]
    else:
        raise MmstreamError(f"sample {sample.key!r}: record 'image' must be a dict of tag -> path")
    n_frames = sum(c.num_frames for c in sample.clips)
    if len(pairs) != n_frames:
        raise SampleError(MEDIA_TAG_MISMATCH, f"record names {len(pairs)} image(s), sample has {n_frames} frame(s)",
                          key=sample.key)
    for _, rel in pairs:
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm.startswith("..") or "\\" in rel:
            raise MmstreamError(f"sample {sample.key!r}: image path {rel!r} must be relative, inside the output")
    return rec, pairs


def encode_minicpmv_wds(sample: Sample, images: list[list[bytes]]) -> Encoded:
    key = check_key(sample.key)
    rec, pairs = _image_map(sample)
    members = []
    seen = set()
    for (_, rel), data in zip(pairs, [j for js in images for j in js]):
        ext = os.path.basename(rel)
        if not _MEMBER_OK.match(ext) or ext in seen or ext.split(".", 1)[0] == "json":
            raise MmstreamError(f"sample {key!r}: frame file name {ext!r} cannot be a tar member name "
                                f"(want unique names like 00000.jpg)")
        seen.add(ext)
        members.append((ext, data))
    members.append(("json", dump_json(rec)))
    return Encoded(key=key, members=members)


def encode_minicpmv_files(sample: Sample, images: list[list[bytes]], *, with_files: bool = True,
                          ext: Optional[str] = None) -> Encoded:
    """Frames as ``images/<group>/<name>`` (the group's first record's key names the
    folder), shared by every record of the group; ``with_files`` carries their bytes;
    ``ext`` replaces the names' extension (``.png``)."""
    key = check_key(sample.key)
    rec, pairs = _image_map(sample)
    folder = check_key(sample.group or key)
    files = []
    mapping = {}
    for (tag, rel), data in zip(pairs, [j for js in images for j in js]):
        name = os.path.basename(os.path.normpath(rel))
        if ext:
            name = os.path.splitext(name)[0] + ext
        path = f"{IMAGES_DIR}/{folder}/{name}"
        if with_files:
            files.append((path, data))
        mapping[tag] = path
    out = dict(rec)
    if isinstance(rec.get("image"), str):
        out["image"] = mapping["<image>"]
    else:
        out["image"] = mapping
    return Encoded(key=key, files=files, record=out)
