"""Annotation readers: one annotation file in, one :class:`Record` per position out.

    from mmstream.sources import iter_source
    for item in iter_source(src):          # src: a SourceConfig
        if isinstance(item, SampleError):  # a record that cannot be used, yielded
            ...                            # count it, or raise it in strict mode
        else:
            ...                            # a Record: turns, media, key

Every position of the file yields exactly one item, good or bad, so that sharding by
position and counting drops stay exact; ``src.limit`` caps the number of positions.
A record's key is ``<source name>-<position, 8 digits>`` with anything but letters,
digits, ``_`` and ``-`` replaced by ``_`` (it is a WebDataset key: no dots).

Formats (``src.format``): ``videochatgpt``, ``llava``, ``llava_pretrain``,
``sharegpt``, ``t2vid_synthetic``, ``t2vid_raw``, ``minicpmv`` (see
:mod:`mmstream.sources.schemas`), or ``auto``, which picks one per record from its
keys (:func:`detect_format`). JSON array or JSONL is sniffed from the file's
content (:mod:`mmstream.sources.jsonstream`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterator, Union

from ..config import SourceConfig
from ..errors import BAD_RECORD, ConfigError, SampleError
from ..types import Record
from .jsonstream import Limits, Span, scan, sniff
from .schemas import CONVERTERS, Converter, Slot, check_tags, looks_like_t2vid_pages

FORMATS = tuple(CONVERTERS) + ("auto",)

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def record_key(source: str, position: int) -> str:
    """The sample key of ``position`` in source ``source``: ``"vcg-00000042"``."""
    return f"{_key_prefix(source)}-{position:08d}"


@lru_cache(maxsize=256)
def _key_prefix(source: str) -> str:
    return _UNSAFE_KEY_CHARS.sub("_", source)


def detect_format(obj: dict) -> str:
    """Pick the schema of one record from its keys (the ``auto`` format), first rule wins.

    1. ``video_id``, ``q`` and ``a``                          -> ``videochatgpt``
    2. ``context``, ``question`` and ``answer``               -> ``t2vid_raw``
    3. an ``images`` or ``videos`` field                      -> ``sharegpt``
    4. ``image`` is an object, or turns use ``role``/``content``
       with an ``image`` field                                -> ``minicpmv``
    5. ``video`` is a string without a file extension and
       there is no ``id`` (``"LongAlpaca_00000"``)            -> ``t2vid_synthetic``
    6. ``conversations`` or ``messages``                      -> ``llava``

    Anything else is a ``BAD_RECORD``. Rule 5 also catches an id-less LLaVA record
    whose ``video`` is a frame folder: name the format when a source mixes these.
    """
    if "video_id" in obj and "q" in obj and "a" in obj:
        return "videochatgpt"
    if "context" in obj and "question" in obj and "answer" in obj:
        return "t2vid_raw"
    if "images" in obj or "videos" in obj:
        return "sharegpt"
    if "image" in obj and (isinstance(obj["image"], dict) or _role_content_turns(obj)):
        return "minicpmv"
    if looks_like_t2vid_pages(obj):
        return "t2vid_synthetic"
    if "conversations" in obj or "messages" in obj:
        return "llava"
    raise SampleError(BAD_RECORD, f"cannot tell the format from keys {sorted(obj)[:12]}")


def _role_content_turns(obj: dict) -> bool:
    conv = obj.get("conversations", obj.get("messages"))
    return isinstance(conv, list) and bool(conv) and isinstance(conv[0], dict) and "role" in conv[0]


def _convert_auto(obj: dict, at: Slot) -> Record:
    return CONVERTERS[detect_format(obj)](obj, at)


def converter_for(src: SourceConfig) -> Converter:
    if src.format not in FORMATS:
        raise ConfigError(f"source {src.name!r}: format {src.format!r} is not one of {FORMATS}")
    return _convert_auto if src.format == "auto" else CONVERTERS[src.format]


def limits_of(src: SourceConfig) -> Limits:
    """What one record of ``src`` may hold (``max_record_mb``, ``max_json_depth``)."""
    return Limits(max_bytes=int(src.max_record_mb * (1 << 20)), max_depth=src.max_json_depth)


def iter_source(src: SourceConfig) -> Iterator[Union[Record, SampleError]]:
    """Yield one :class:`Record` or :class:`SampleError` per position of ``src.annotations``.

    Errors are yielded, never raised, with ``reason``, ``key`` and ``path`` (the
    annotation file) filled in. Raises :class:`ConfigError` at once for an unknown
    format or an annotation file that is missing, unreadable or not JSON/JSONL.
    """
    items = iter_source_spans(src)
    return (item for item, _ in items)


def iter_source_spans(src: SourceConfig) -> Iterator[tuple[Union[Record, SampleError], Span]]:
    """:func:`iter_source` with the byte span of each position (see :mod:`.jsonstream`)."""
    convert = converter_for(src)
    sniff(src.annotations)  # raise config problems here, not at the first next()
    return _iter(src, convert)


def _iter(src: SourceConfig, convert: Converter) -> Iterator[tuple[Union[Record, SampleError], Span]]:
    if src.limit is not None and src.limit <= 0:
        return
    items = scan(src.annotations, limits=limits_of(src))
    try:
        for position, (obj, span) in enumerate(items):
            yield one_item(obj, record_key(src.name, position), position, src, convert), span
            if src.limit is not None and position + 1 >= src.limit:
                return
    finally:
        items.close()  # release the file handle when the consumer stops early


def one_item(obj: object, key: str, position: int, src: SourceConfig,
             convert: Converter) -> Union[Record, SampleError]:
    """One parsed annotation value (or the error standing for it) as the stream's item."""
    at = Slot(key, position, src.name, src.media_root)
    path = src.annotations
    if isinstance(obj, SampleError):
        return obj.with_context(key=at.key, path=path)
    if not isinstance(obj, dict):
        return SampleError(BAD_RECORD, f"expected a JSON object, got {type(obj).__name__}",
                           key=at.key, path=path)
    try:
        record = convert(obj, at)
        check_tags(record)
    except SampleError as err:
        # an outcome, not an exception in flight: without its traceback, whose frames (and the
        # dataset generator's frames behind them, holding decoded clips) it would keep alive
        return err.with_context(key=at.key, path=path).with_traceback(None)
    return record


__all__ = ["iter_source", "iter_source_spans", "one_item", "converter_for", "detect_format", "record_key",
           "limits_of", "FORMATS"]
