"""One writer's side of a cache run: the stream's items in, each key written once.

    sink = SampleSink(writer, covered=keys_done_before, on_drop=record)
    for item in items:                 # Encoded samples and Drops
        sink.put(item)
    writer.close()                     # commits the last shard (its on_commit records it)

The local engine runs one sink in the main process; the Ray engine runs one in every
Ray writer (a task or an actor), next to the decoder, so that frames go from the worker
that encodes them straight into its shards (:mod:`.ray_engine`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from ..errors import MmstreamError, SampleError
from ..types import Drop, Sample
from .formats import Encoded
from .shards import FilesWriter, ShardWriter

#: Drop reason for a key that a source yields twice (a key must be unique).
DUPLICATE_KEY = "duplicate_key"


def encode_item(encode: Callable[[Sample], Encoded], item: Any, *, strict: bool = False) -> Union[Encoded, Drop]:
    """A dataset item as a writer takes it: a Sample encoded (``source`` set), a Drop as it
    is; a sample the encoder rejects becomes a Drop (or, with ``strict``, raises)."""
    if isinstance(item, Drop):
        return item
    if not isinstance(item, Sample):
        raise MmstreamError(f"the dataset yielded {type(item).__name__}, expected Sample or Drop")
    try:
        encoded = encode(item)
    except SampleError as exc:
        if strict:
            raise
        exc.with_context(key=item.key)
        return Drop(item.key, item.source, exc.reason, exc.path, exc.message)
    encoded.source = item.source
    return encoded


class SampleSink:
    """Writes Encoded samples with ``writer`` and reports Drops to ``on_drop``, each key
    once: a key in ``covered`` (cached by an earlier run) is passed over, a Drop repeated
    for a key is reported once, and a sample whose key came before is a ``duplicate_key``
    drop. ``kept`` counts the samples written."""

    def __init__(self, writer: Union[ShardWriter, FilesWriter], *, covered: Optional[set[str]] = None,
                 on_drop: Optional[Callable[[Drop], None]] = None):
        self.writer = writer
        self.covered = covered or set()
        self.on_drop = on_drop or (lambda d: None)
        self.kept = 0
        self._seen: set[str] = set()
        self._dropped: set[str] = set()

    def put(self, item: Union[Encoded, Drop]) -> bool:
        """Write or report one item; True when a sample was written."""
        if isinstance(item, Drop):
            if item.key not in self.covered and item.key not in self._dropped:
                self._dropped.add(item.key)
                self.on_drop(item)
            return False
        if item.key in self.covered or item.key in self._seen:
            if item.files and isinstance(self.writer, FilesWriter):
                self.writer.store_files(item)  # frames other records of its group name
            if item.key in self._seen:
                self.on_drop(Drop(item.key, item.source, DUPLICATE_KEY, message="key yielded twice"))
            return False  # covered: already cached (a dataset that ignores skip_keys)
        self._seen.add(item.key)
        self.writer.write(item)
        self.kept += 1
        return True


__all__ = ["SampleSink", "encode_item", "DUPLICATE_KEY"]
