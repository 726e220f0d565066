"""One function per annotation schema: a parsed dict in, a :class:`Record` out.

    slot = Slot(key="vcg-00000000", index=0, source="vcg", root="/data/videos")
    record = videochatgpt({"video_id": "v_k_ZXmr8pmrs", "q": "What...?", "a": "..."}, slot)
    check_tags(record)  # MEDIA_TAG_MISMATCH unless tags and media pair up one-to-one

A converter raises :class:`SampleError` (``BAD_RECORD`` for a missing field or a
non-string value, ``MEDIA_TAG_MISMATCH`` for placeholders it cannot pair up); the
caller turns that into an item of the stream. Turns keep their media tags in place,
normalised to ``<image>`` and ``<video>``; ``media`` lists the media in the order
their tags appear. Media paths are kept exactly as written: resolving them,
probing extensions and checking they stay inside the root is the media stage's job.

Top-level fields a converter does not consume and whose values are scalars (e.g.
LLaVA-Video-178K's ``data_source``) are copied into ``Record.meta``; converters
also set ``meta["format"]`` (the schema used) and, where it applies,
``meta["synthetic"]``, ``meta["probe_ext"]`` and ``meta["video_id"]``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..errors import BAD_RECORD, MEDIA_TAG_MISMATCH, SampleError
from ..types import IMAGE_TAG, VIDEO_TAG, MediaRef, Record, Turn


@dataclass(frozen=True)
class Slot:
    """Where a record sits: the fields of :class:`Record` that do not come from the dict."""

    key: str
    index: int
    source: str
    root: Optional[str]


Converter = Callable[[dict, Slot], Record]

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}
_TAG_RE = re.compile(r"<(image|video)>")
_NUMBERED_IMAGE_RE = re.compile(r"<image_\d+>")
#: media kinds a ``<video>`` tag may stand for; ``<image>`` stands for ``image`` only
_VIDEO_KINDS = ("video", "frames", "pages")
#: top-level fields some converter consumes; never copied into meta
_CONSUMED = frozenset({"id", "conversations", "messages", "image", "images", "video", "videos",
                       "video_id", "q", "a", "context", "question", "answer", "system"})


def _bad(message: str) -> SampleError:
    return SampleError(BAD_RECORD, message)


def _mismatch(message: str) -> SampleError:
    return SampleError(MEDIA_TAG_MISMATCH, message)


def _text(obj: dict, field: str) -> str:
    if field not in obj:
        raise _bad(f"missing field {field!r}")
    value = obj[field]
    if not isinstance(value, str):
        raise _bad(f"field {field!r} is {type(value).__name__}, expected a string")
    return value


def _path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{what} must be a non-empty path string, got {value!r:.80}")
    return value


def _paths(obj: dict, field: str) -> list[str]:
    """A list of paths; a bare string counts as a list of one; absent or null is empty."""
    value = obj.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        return [_path(value, f"field {field!r}")]
    if not isinstance(value, list):
        raise _bad(f"field {field!r} is {type(value).__name__}, expected a path or a list of paths")
    return [_path(v, f"{field}[{i}]") for i, v in enumerate(value)]


def _record_id(obj: dict) -> Optional[str]:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise _bad(f"field 'id' is {type(value).__name__}, expected a string or number")
    return str(value)


def _meta(obj: dict, fmt: str, **extra: Any) -> dict[str, Any]:
    meta = {k: v for k, v in obj.items()
            if k not in _CONSUMED and (v is None or isinstance(v, (str, int, float, bool)))}
    meta["format"] = fmt
    meta.update(extra)
    return meta


def parse_turns(obj: dict) -> list[Turn]:
    """Read ``conversations`` (or ``messages``) into turns with normalised roles.

    Each turn is ``{"from": ..., "value": ...}`` or ``{"role": ..., "content": ...}``;
    roles ``human``/``gpt`` become ``user``/``assistant``.
    """
    field = "conversations" if "conversations" in obj else "messages"
    conv = obj.get(field)
    if conv is None:
        raise _bad("missing field 'conversations'")
    if not isinstance(conv, list) or not conv:
        raise _bad(f"field {field!r} must be a non-empty list")
    turns = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise _bad(f"{field}[{i}] is {type(turn).__name__}, expected an object")
        role = turn.get("from", turn.get("role"))
        content = turn["value"] if "value" in turn else turn.get("content")
        if not isinstance(role, str) or role.lower() not in _ROLES:
            raise _bad(f"{field}[{i}] has role {role!r}, expected one of {sorted(_ROLES)}")
        if not isinstance(content, str):
            raise _bad(f"{field}[{i}] content is {type(content).__name__}, expected a string")
        turns.append(Turn(_ROLES[role.lower()], content))
    return turns


def tags(turns: Iterable[Turn]) -> list[str]:
    """The media tags over all turns, in order: a list of ``"image"``/``"video"``."""
    return [m.group(1) for t in turns for m in _TAG_RE.finditer(t.content)]


def check_tags(record: Record) -> None:
    """Raise ``MEDIA_TAG_MISMATCH`` unless the i-th tag and the i-th media agree.

    ``<image>`` pairs with an ``image``; ``<video>`` with a ``video``, ``frames`` or
    ``pages``. Counts must be equal.
    """
    found = tags(record.turns)
    kinds = [m.kind for m in record.media]
    if len(found) != len(kinds):
        raise _mismatch(f"{len(found)} media tag(s) {found} for {len(kinds)} media {kinds}")
    for i, (tag, kind) in enumerate(zip(found, kinds)):
        if (kind in _VIDEO_KINDS) != (tag == "video"):
            raise _mismatch(f"tag {i} is <{tag}> but media {i} is a {kind}: tags {found}, media {kinds}")


def _video_tags_from_image_tags(turns: list[Turn], media: list[MediaRef]) -> list[Turn]:
    """LLaVA-Video-178K writes the video tag as ``<image>``: rewrite it when all media are videos."""
    if not media or any(m.kind not in _VIDEO_KINDS for m in media):
        return turns
    if any(VIDEO_TAG in t.content for t in turns):
        return turns
    return [Turn(t.role, t.content.replace(IMAGE_TAG, VIDEO_TAG)) for t in turns]


def _ordered_by_tags(turns: list[Turn], images: list[str], videos: list[str],
                     root: Optional[str]) -> list[MediaRef]:
    """Pair the i-th ``<image>`` with ``images[i]`` and the i-th ``<video>`` with ``videos[i]``."""
    found = tags(turns)
    n_img, n_vid = found.count("image"), found.count("video")
    if n_img != len(images) or n_vid != len(videos):
        raise _mismatch(f"{n_img} <image> tag(s) for {len(images)} image(s), "
                        f"{n_vid} <video> tag(s) for {len(videos)} video(s)")
    lists = {"image": iter(images), "video": iter(videos)}
    return [MediaRef(tag, next(lists[tag]), root) for tag in found]


# --- one converter per schema ------------------------------------------------------


def videochatgpt(obj: dict, at: Slot) -> Record:
    """Video-ChatGPT ``VideoInstruct100K.json``: ``{"video_id", "q", "a"}``.

    The video path has no extension (the media stage probes for one).
    """
    video_id = _path(obj.get("video_id"), "field 'video_id'")
    q, a = _text(obj, "q"), _text(obj, "a")
    turns = [Turn("user", VIDEO_TAG + "\n" + q), Turn("assistant", a)]
    return Record(at.key, at.source, turns, [MediaRef("video", video_id, at.root)], at.index,
                  _record_id(obj), _meta(obj, "videochatgpt", video_id=video_id, probe_ext=True))


def llava(obj: dict, at: Slot, *, fmt: str = "llava") -> Record:
    """LLaVA-style: ``conversations`` plus an optional ``video`` and/or ``image`` (a path or a list).

    Videos come first, then images, when a record has both (tags decide the order
    only in the ShareGPT schema). ``<image>`` tags of a video-only record become
    ``<video>`` (LLaVA-Video-178K).
    """
    turns = parse_turns(obj)
    media = [MediaRef("video", p, at.root) for p in _paths(obj, "video")]
    media += [MediaRef("image", p, at.root) for p in _paths(obj, "image")]
    turns = _video_tags_from_image_tags(turns, media)
    return Record(at.key, at.source, turns, media, at.index, _record_id(obj), _meta(obj, fmt))


def llava_pretrain(obj: dict, at: Slot) -> Record:
    """LLaVA-Pretrain ``blip_laion_cc_sbu_558k.json``: one ``image``; the tag may end the turn."""
    _path(obj.get("image"), "field 'image'")
    return llava(obj, at, fmt="llava_pretrain")


def sharegpt(obj: dict, at: Slot) -> Record:
    """ShareGPT multi-media (Qwen2-VL / Pai): ``conversations`` + ``images`` + ``videos``.

    The i-th ``<image>`` over all turns is ``images[i]``, the i-th ``<video>`` is
    ``videos[i]``; the media list follows tag order. A top-level ``system`` string
    becomes a leading system turn.
    """
    turns = parse_turns(obj)
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _bad(f"field 'system' is {type(system).__name__}, expected a string")
        if system:
            turns.insert(0, Turn("system", system))
    media = _ordered_by_tags(turns, _paths(obj, "images"), _paths(obj, "videos"), at.root)
    return Record(at.key, at.source, turns, media, at.index, _record_id(obj), _meta(obj, "sharegpt"))


def t2vid_synthetic(obj: dict, at: Slot) -> Record:
    """T2Vid synthetic: ``video`` names a folder of rendered text pages; no ``id``."""
    turns = parse_turns(obj)
    media = [MediaRef("pages", _path(obj.get("video"), "field 'video'"), at.root)]
    turns = _video_tags_from_image_tags(turns, media)
    return Record(at.key, at.source, turns, media, at.index, _record_id(obj),
                  _meta(obj, "t2vid_synthetic", synthetic=True))


def t2vid_raw(obj: dict, at: Slot) -> Record:
    """Raw T2Vid synthetic ``{context, question, answer}``: pages rendered from ``context``."""
    context, question, answer = _text(obj, "context"), _text(obj, "question"), _text(obj, "answer")
    turns = [Turn("user", VIDEO_TAG + "\n" + question), Turn("assistant", answer)]
    return Record(at.key, at.source, turns, [MediaRef("pages", None, at.root, text=context)],
                  at.index, _record_id(obj), _meta(obj, "t2vid_raw", synthetic=True))


def minicpmv(obj: dict, at: Slot) -> Record:
    """MiniCPM-V: ``image`` is ``{"<image_00>": path, ...}`` (dict order = time order) or one path.

    Each placeholder in the turns becomes ``<image>`` and the media follow the
    placeholders' order (for well-formed records, the dict's order). Every
    placeholder must name a dict entry and every entry must be used exactly once.
    With a single path and no ``<image>`` tag anywhere, ``<image>\\n`` is put in
    front of the first turn, as MiniCPM-V's finetuning code does.
    """
    turns = parse_turns(obj)
    image = obj.get("image")
    if image is None:
        media: list[MediaRef] = []
    elif isinstance(image, str):
        media = [MediaRef("image", _path(image, "field 'image'"), at.root)]
        if not any(_TAG_RE.search(t.content) or _NUMBERED_IMAGE_RE.search(t.content) for t in turns):
            turns[0] = Turn(turns[0].role, IMAGE_TAG + "\n" + turns[0].content)
    elif isinstance(image, dict):
        turns, media = _replace_placeholders(turns, image, at.root)
    else:
        raise _bad(f"field 'image' is {type(image).__name__}, expected a path or an object")
    return Record(at.key, at.source, turns, media, at.index, _record_id(obj), _meta(obj, "minicpmv"))


def _replace_placeholders(turns: list[Turn], images: dict, root: Optional[str]) -> tuple[list[Turn], list[MediaRef]]:
    for name, path in images.items():
        _path(path, f"image[{name!r}]")
    pattern = re.compile("|".join([re.escape(n) for n in images] + [_NUMBERED_IMAGE_RE.pattern]))
    used: list[str] = []

    def swap(m: re.Match) -> str:
        if m.group(0) not in images:
            raise _mismatch(f"placeholder {m.group(0)} has no entry in 'image' ({list(images)})")
        used.append(m.group(0))
        return IMAGE_TAG

    turns = [Turn(t.role, pattern.sub(swap, t.content)) for t in turns]
    if sorted(used) != sorted(images):
        raise _mismatch(f"placeholders used {used} do not match the 'image' entries {list(images)} one-to-one")
    return turns, [MediaRef("image", images[n], root) for n in used]


def looks_like_t2vid_pages(obj: dict) -> bool:
    """A ``video`` without ``id`` whose path has no file extension (``LongAlpaca_00000``)."""
    video = obj.get("video")
    return "id" not in obj and isinstance(video, str) and not os.path.splitext(video)[1]


CONVERTERS: dict[str, Converter] = {
    "videochatgpt": videochatgpt,
    "llava": llava,
    "llava_pretrain": llava_pretrain,
    "sharegpt": sharegpt,
    "t2vid_synthetic": t2vid_synthetic,
    "t2vid_raw": t2vid_raw,
    "minicpmv": minicpmv,
}
