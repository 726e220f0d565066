"""``StreamingDataset``: annotation records in, decoded and formatted samples out of
DataLoader workers.

    ds = StreamingDataset("configs/t2vid_minicpmv.yaml")
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=4)

Every record of the (shuffled) global stream has a position p; the worker with global
id g = rank * num_workers + worker_id takes the positions p with p % total == g, so each
record is yielded (or dropped) exactly once per epoch for any world size and worker
count. Shuffling is a bounded buffer seeded by (seed, epoch), so every worker computes
the same order without talking to the others; only light annotation records are
shuffled, never frames. The state is (epoch, records this worker has consumed):
resuming replays the cheap annotation stream and skips what was consumed, without
decoding it again.
"""
from __future__ import annotations

import logging
import os
import random
from collections import Counter
from typing import Any, Iterable, Iterator, Optional, Union

from torch.utils.data import IterableDataset, get_worker_info

from .config import Config, load_config
from .dist import resolve_rank
from .errors import SampleError
from .pipeline import Pipeline
from .sources import iter_source
from .types import Drop, Record, Sample

log = logging.getLogger(__name__)

Item = Union[Record, SampleError]


def shuffle_buffer(items: Iterable[Item], size: int, seed: Any) -> Iterator[Item]:
    """Deterministic bounded-buffer shuffle: holds at most ``size`` items."""
    rng = random.Random(str(seed))
    buf: list[Item] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class StreamingDataset(IterableDataset):
    """Streams samples from a config (a YAML path, a dict or a :class:`Config`).

    ``emit_drops``: yield a :class:`Drop` for each skipped record instead of skipping
    silently (the CLI uses it to count). ``skip_keys``: records to pass over before
    any decoding (a resumed cache run). ``rank``/``world_size`` override the
    distributed setup.
    """

    def __init__(self, config: Union[str, os.PathLike, dict, Config], *, emit_drops: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 skip_keys: Optional[Iterable[str]] = None):
        super().__init__()
        self.config = load_config(config)
        self.emit_drops = emit_drops
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None:
            resolve_rank(rank, world_size)  # validate now, not in a worker
        self._rank, self._world = rank, world_size
        self.skip_keys = frozenset(skip_keys or ())
        self.model = None
        if self.config.model is not None:
            from .models import get_model  # validates name and tokenizer now, not in a worker

            self.model = get_model(self.config.model)
        self.epoch = 0
        self._consumed = 0  # records of this worker's share consumed in the current epoch
        self._resume_from = 0
        self.stats: Counter = Counter()  # per process: kept, skipped, and one count per drop reason

    # -- epoch and checkpoint state -------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (call before iterating, like DistributedSampler)."""
        self.epoch = int(epoch)
        self._resume_from = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._resume_from = int(state["consumed"])
        self._consumed = self._resume_from

    # -- the stream -----------------------------------------------------------------
    def records(self) -> Iterator[Item]:
        """The global record stream in source order, before shuffling and sharding."""
        index = 0
        for src in self.config.sources:
            for item in iter_source(src):
                if isinstance(item, Record):
                    item.index = index
                else:
                    item.source = src.name
                index += 1
                yield item

    def ordered(self, epoch: Optional[int] = None) -> Iterator[Item]:
        """The global stream in this epoch's order (what every worker computes)."""
        loader = self.config.loader
        items = self.records()
        if not loader.shuffle:
            return items
        epoch = self.epoch if epoch is None else epoch
        return shuffle_buffer(items, loader.shuffle_buffer, (loader.seed, epoch))

    def shard(self) -> tuple[int, int]:
        """(global worker id, total workers) of the calling process."""
        rank, world = resolve_rank(self._rank, self._world, self.config)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[Union[Sample, Drop]]:
        me, total = self.shard()
        pipe = Pipeline(self.config, self.model)
        skip = self._resume_from
        self._resume_from = 0
        taken = 0
        for pos, item in enumerate(self.ordered()):
            if pos % total != me:
                continue
            taken += 1
            if taken <= skip:
                continue
            self._consumed = taken
            if item.key in self.skip_keys:
                self.stats["skipped"] += 1
                continue
            try:
                if isinstance(item, SampleError):
                    raise item
                sample = pipe.process(item)
            except SampleError as exc:
                drop = self._drop(exc, item)
                if drop is not None:
                    yield drop
                continue
            self.stats["kept"] += 1
            yield sample

    def _drop(self, exc: SampleError, item: Item) -> Optional[Drop]:
        source = item.source
        if self.config.strict:
            raise exc
        self.stats[exc.reason] += 1
        # the consumer reports emitted drops itself; otherwise this line is the only trace
        log.log(logging.INFO if self.emit_drops else logging.WARNING, "dropped %s [%s] %s: %s",
                exc.key, exc.reason, exc.path or "", exc.message)
        if self.emit_drops:
            return Drop(key=exc.key or "", source=source, reason=exc.reason, path=exc.path, message=exc.message)
        return None
