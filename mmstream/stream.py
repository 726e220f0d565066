"""The stream behind ``StreamingDataset`` (:mod:`mmstream.dataset`): annotation records in,
decoded and formatted samples out of DataLoader workers, each video decoded once however
many records use it.

    ds = StreamingDataset("configs/t2vid_minicpmv.yaml")
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=4)

:class:`Stream` is all of it but torch's ``IterableDataset`` base, and this module does not
import torch: a Ray worker runs a stream's groups without importing it (~1.7 s and a few
hundred MB a worker process); ``StreamingDataset`` adds the base for DataLoaders.

At construction the annotations are indexed once per node (:mod:`mmstream.sources.index`,
cached and memory-mapped by every rank and worker): every record's byte span and its
**decode group**, the records whose media are the same files in the same source. An epoch is a permutation of the groups seeded by
(seed, epoch); the groups are split over the world_size x num_workers workers (a
worker's global id is rank x num_workers + worker_id) so that each worker's summed
decode cost (:mod:`mmstream.media.cost`: its planned frames, frame size, duration and GOP)
is about the same (:func:`split_by_cost`), and each
worker takes its groups in epoch order. So every record is yielded (or dropped) exactly once
per epoch for any world size and worker count, every worker computes the same order
without talking to the others, and a group's media are planned and decoded once, in
one worker, for all its records. The worker reads each record back by its byte span,
applies the budget per record, decodes the group, and hands the samples to a mix
buffer (:mod:`mmstream.mix`, ``loader.mix_buffer``) that interleaves the samples of
different groups. While a group's samples are handed out, the next group is already
being read, planned and decoded in a thread (:class:`_Ahead`): the DataLoader takes items
from its workers in turn, so a worker whose next item is not asked for yet would
otherwise sit idle.

State: ``(epoch, groups this worker has taken, positions taken but not yet handed
out, the mix buffer's pop count)``. Resuming skips the taken groups without reading
or decoding them, processes again only the groups of the positions still waiting
(in the order they waited), and so hands out the same sequence an uninterrupted run
would have.
"""
from __future__ import annotations

import heapq
import logging
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from . import storage, timing
from .config import Config, load_config
from .dist import resolve_rank
from .errors import ConfigError, SampleError
from .lifetime import die_with_parent
from .media.shared import dataloader_worker_info
from .mix import MixBuffer
from .pack import Pack, Packer
from .pipeline import Pipeline
from .sources.index import RecordIndex, media_signature
from .types import Drop, Record, Sample

log = logging.getLogger(__name__)

Item = Union[Record, SampleError]


@dataclass
class _Progress:
    """Where this worker's pass over its share stands."""

    groups_done: int
    mix: MixBuffer
    pending_groups: list = field(default_factory=list)  # [(group, positions)] from a resumed state
    packer: Optional[Packer] = None
    packed: dict = field(default_factory=dict)  # the packer's state, from a resumed state (until restored)


class Stream:
    """Streams samples from a config (a YAML path, a dict or a :class:`Config`); used as
    :class:`mmstream.dataset.StreamingDataset`.

    ``emit_drops``: yield a :class:`Drop` for each skipped record instead of skipping
    silently (the CLI uses it to count). ``skip_keys``: records to pass over before
    any decoding (a resumed cache run). ``rank``/``world_size`` override the
    distributed setup. ``progress``: show a progress bar while large annotation files
    are indexed (default: when stderr is a terminal). ``index_cache``: load the record
    index from the node's cache, or build and save it there (False: build it here, save
    nothing; :mod:`mmstream.sources.index_cache`).
    """

    def __init__(self, config: Union[str, os.PathLike, dict, Config], *, emit_drops: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 skip_keys: Optional[Iterable[str]] = None, progress: Optional[bool] = None,
                 index_cache: bool = True):
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
        if self.config.loader.pack is not None:
            self.config = _with_pack_budget(self.config, self.model)
        check_runtime(self.config)
        resolve_rank(self._rank, self._world, self.config)
        self.pipeline = Pipeline(self.config, self.model)  # its budgets check the filter sections now
        # annotation files: ConfigError now; the node's cached index when it is current
        self.index = RecordIndex.open(self.config, progress=progress, cache=index_cache)
        # the epoch lives in shared memory, so that set_epoch in the training process also
        # reaches persistent DataLoader workers (persistent_workers=True), which keep their
        # own copy of the dataset between epochs (fork and spawn alike: see __getstate__)
        self._shared_epoch = multiprocessing.RawValue("q", 0)
        self._epoch = 0
        self._resume: Optional[dict[str, Any]] = None
        self._progress: Optional[_Progress] = None
        self.stats: Counter = Counter()  # per process: kept, skipped, and one count per drop reason

    # -- epoch and checkpoint state -------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self._shared_epoch.value) if self._shared_epoch is not None else self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        if self._shared_epoch is not None:
            self._shared_epoch.value = self._epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # shared memory crosses only to processes this one starts (DataLoader workers); a
        # copy sent anywhere else (Ray, a pickle on disk) carries the epoch as a number
        if multiprocessing.context.get_spawning_popen() is None:
            state["_epoch"], state["_shared_epoch"] = self.epoch, None
        return state

    def as_stream(self) -> "Stream":
        """This stream as a plain :class:`Stream` (the same state; a ``StreamingDataset``'s
        torch base left out): what Ray workers get, so that they never import torch."""
        stream = Stream.__new__(Stream)
        stream.__dict__.update(self.__getstate__())
        return stream

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (call before iterating, like DistributedSampler;
        persistent DataLoader workers see it too)."""
        self.epoch = int(epoch)
        self._resume = None
        self._progress = None

    def state_dict(self) -> dict[str, Any]:
        p = self._progress
        if p is None:
            r = self._resume or {"groups_done": 0, "pending": [], "mix": None, "packer": {}}
            return {"epoch": self.epoch, **r}
        pending = [int(x) for _, positions in p.pending_groups for x in positions] + p.mix.pending()
        packer = p.packer.state() if p.packer is not None and not p.packed else p.packed
        return {"epoch": self.epoch, "groups_done": p.groups_done, "pending": pending, "mix": p.mix.state(),
                "packer": packer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "groups_done" not in state:
            raise ValueError("this state was saved by an mmstream without decode groups; it cannot resume "
                             "the epoch (start it over with set_epoch)")
        self.epoch = int(state["epoch"])
        self._resume = {"groups_done": int(state["groups_done"]), "pending": [int(p) for p in state["pending"]],
                        "mix": state.get("mix"), "packer": state.get("packer") or {}}
        self._progress = None

    # -- the order ------------------------------------------------------------------
    def records(self) -> Iterator[Item]:
        """Every record in file order (sources in order), before shuffling and sharding."""
        return self.index.items()

    def epoch_groups(self, epoch: Optional[int] = None) -> np.ndarray:
        """The decode groups in this epoch's order (what every worker computes)."""
        n = self.index.num_groups
        loader = self.config.loader
        # int32 ids (the index's own width): every rank and worker holds this order, and a
        # forked worker's temporaries land in copy-on-write pages of its parent's heap
        order = np.arange(n, dtype=np.int32)
        if loader.shuffle:
            epoch = self.epoch if epoch is None else epoch
            seed = random.Random(f"{loader.seed}-{epoch}").getrandbits(64)
            np.random.default_rng(seed).shuffle(order)  # the same draws as permutation(n)
        return order

    def my_groups(self, me: int, total: int, epoch: Optional[int] = None) -> np.ndarray:
        """The groups worker ``me`` of ``total`` takes this epoch, in epoch order
        (:func:`split_by_cost`)."""
        order = self.epoch_groups(epoch)
        owner = split_by_cost(self.index.group_cost[order], total)
        return order[owner == me]

    def ordered(self, epoch: Optional[int] = None) -> Iterator[Item]:
        """Every record, group by group in this epoch's order."""
        for g in self.epoch_groups(epoch):
            for p in self.index.members(int(g)):
                yield self.index.item(int(p))

    def shard(self) -> tuple[int, int]:
        """(global worker id, total workers) of the calling process."""
        rank, world = resolve_rank(self._rank, self._world, self.config)
        info = dataloader_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    # -- the stream -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Union[Sample, Drop]]:
        if dataloader_worker_info() is not None:
            die_with_parent()  # a worker must not outlive a killed training or cache run
        me, total = self.shard()
        loader = self.config.loader
        mine = self.my_groups(me, total)
        resume = self._resume or {"groups_done": 0, "pending": [], "mix": None, "packer": {}}
        self._resume = None
        max_bytes = None if loader.mix_buffer_mb is None else int(loader.mix_buffer_mb * (1 << 20))
        mix = MixBuffer(loader.mix_buffer, max_bytes, seed=(loader.seed, self.epoch, me), state=resume["mix"])
        packer = Packer(loader.pack.max_tokens, loader.pack.buffer) if loader.pack is not None else None
        packed = resume.get("packer") or {}
        in_packer = [p for pack in packed.get("ready", []) for p in pack] + list(packed.get("items", []))
        progress = _Progress(resume["groups_done"], mix, self._pending_groups(in_packer + resume["pending"]),
                             packer, dict(packed))
        self._progress = progress
        pipe = self.pipeline
        try:
            yield from self._stream(pipe, mix, progress, mine)
        finally:
            pipe.close()  # the decode helper goes with the iteration
        timing.peak("mix_peak_bytes", mix.stats.peak_bytes)
        timing.peak("mix_peak_samples", mix.stats.peak_samples)

    def _stream(self, pipe, mix, progress, mine):
        # groups taken before the state was saved, not all handed out: the buffer as it was,
        # refilled whole before anything is handed out (so the choices are those it made)
        packed = {p for pack in progress.packed.get("ready", []) for p in pack} | set(progress.packed.get("items", []))
        waiting: dict[int, Any] = {}  # outcomes of the positions that waited in the packer
        while progress.pending_groups:
            g, positions = progress.pending_groups[0]
            outcomes = self._run_group(pipe, g, positions)
            progress.pending_groups.pop(0)
            waiting.update((p, o) for p, o in outcomes if p in packed)
            rest = [(p, o) for p, o in outcomes if p not in packed]
            mix.add(g, rest, _frames_bytes(rest))
        if progress.packer is not None:
            progress.packer.restore(progress.packed, {p: o for p, o in waiting.items() if isinstance(o, Sample)})
            for p, o in waiting.items():
                if isinstance(o, SampleError):
                    mix.add(-1, [(p, o)])  # changed since it was saved: counted as the drop it is now
        progress.packed = {}
        yield from self._hand_out(mix, progress.packer)
        ahead = _Ahead(lambda g: self._run_group(pipe, g, self.index.members(g)))
        try:
            while progress.groups_done < len(mine):
                g = int(mine[progress.groups_done])
                outcomes = ahead.take(g)
                progress.groups_done += 1  # with the add below: nothing is yielded in between
                mix.add(g, outcomes, _frames_bytes(outcomes))
                if progress.groups_done < len(mine):  # the next group is decoded while these go out
                    ahead.start(int(mine[progress.groups_done]))
                yield from self._hand_out(mix, progress.packer)
        finally:
            ahead.close()
        yield from self._hand_out(mix, progress.packer, flush=True)
        for name in ("restarts", "recycled"):  # decode helpers replaced (timeouts and crashes; RSS)
            if getattr(pipe.supervised, name):
                self.stats[f"decoder_{name}"] = getattr(pipe.supervised, name)

    def _pending_groups(self, positions: list[int]) -> list[tuple[int, list[int]]]:
        groups: dict[int, list[int]] = {}
        for p in positions:
            groups.setdefault(int(self.index.group[p]), []).append(p)
        return list(groups.items())

    def _hand_out(self, mix: MixBuffer, packer: Optional[Packer] = None,
                  flush: bool = False) -> Iterator[Union[Sample, Drop, Pack]]:
        timing.peak("mix_peak_bytes", mix.nbytes)
        while mix.ready() or (flush and len(mix)):
            pos, item = mix.pop()  # popped before it is yielded: a state saved meanwhile has it consumed
            if isinstance(item, SampleError):
                drop = self._drop(item)
                if drop is not None:
                    yield drop
                continue
            self.stats["kept"] += 1
            if item.fitted is not None:
                self.stats["fitted"] += 1
            if packer is None:
                yield item
                continue
            packer.add(pos, item)
            while packer.ready:
                yield packer.pop()  # popped first: a state saved meanwhile has it consumed
        if packer is not None:
            if flush:
                packer.flush()
            while packer.ready:
                yield packer.pop()

    def _run_group(self, pipe: Pipeline, g: int, positions) -> list[tuple[int, Any]]:
        """The outcome of each position of group ``g`` (those in ``positions``), skip
        keys left out. Records are read back from the annotation files here."""
        out, records = self._read_group(positions)
        if not records:
            return out
        name = self.index.key(int(self.index.members(g)[0]))
        for part in _same_media(records):  # a hash collision never merges different media
            outcomes = pipe.process_group([r for _, r in part], group=name)
            for (p, _), outcome in zip(part, outcomes):
                if isinstance(outcome, SampleError):
                    outcome.source = outcome.source or self.index.sources[int(self.index.source[p])].name
                    self._strict(outcome)
                out.append((p, outcome))
        out.sort(key=lambda po: po[0])
        return out

    def decode_part(self, pipe: Pipeline, g: int, part: int, parts: int) -> dict:
        """Part ``part`` of ``parts`` of group ``g``'s long clips, for the worker that runs
        the group (:meth:`Pipeline.decode_part`; skip keys left out as it leaves them)."""
        _, records = self._read_group(self.index.members(g), count=False)
        found: dict = {}
        for same in _same_media(records):
            found.update(pipe.decode_part([r for _, r in same], part, parts))
        return found

    def _read_group(self, positions, count: bool = True) -> tuple[list[tuple[int, Any]], list[tuple[int, Record]]]:
        """The records at ``positions`` (skip keys left out, counted when ``count``), and
        the positions whose record could not be read, with their error."""
        errors: list[tuple[int, Any]] = []
        records: list[tuple[int, Record]] = []
        with timing.stage("read"):
            for p in positions:
                p = int(p)
                if self.skip_keys and self.index.key(p) in self.skip_keys:
                    self.stats["skipped"] += count
                    continue
                item = self.index.item(p)
                if isinstance(item, SampleError):
                    errors.append((p, self._strict(item) if count else item))
                else:
                    records.append((p, item))
        return errors, records

    def _strict(self, exc: SampleError) -> SampleError:
        if self.config.strict:
            raise exc
        return exc

    def _drop(self, exc: SampleError) -> Optional[Drop]:
        self.stats[exc.reason] += 1
        # the consumer reports emitted drops itself; otherwise this line is the only trace
        log.log(logging.INFO if self.emit_drops else logging.WARNING, "dropped %s [%s] %s: %s",
                exc.key, exc.reason, exc.path or "", exc.message)
        if self.emit_drops:
            return Drop(key=exc.key or "", source=exc.source or "", reason=exc.reason, path=exc.path,
                        message=exc.message)
        return None


class _Ahead:
    """The next group's work (read, plan, budget, decode), done in one thread while the
    current group's samples are handed out: the DataLoader delivers items in order, so
    a worker whose samples wait for another worker's would otherwise sit idle. Every
    group runs in that same thread, so the decode helper it forks (which dies with the
    thread that forked it) lives as long as the iteration."""

    def __init__(self, run):
        from concurrent.futures import ThreadPoolExecutor

        self.run = run
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mmstream-groups")
        self.group: Optional[int] = None
        self.future = None

    def start(self, g: int) -> None:
        self.group, self.future = g, self.pool.submit(self.run, g)

    def take(self, g: int):
        if self.group != g:  # not started ahead (the first group)
            self.start(g)
        future, self.group, self.future = self.future, None, None
        return future.result()

    def close(self) -> None:
        if self.future is not None:
            self.future.cancel()
        self.pool.shutdown(wait=True)
        self.group = self.future = None


#: Groups placed one by one on the least-loaded worker, per worker; the rest go in a
#: vectorised round trip (small groups, where the law of large numbers balances anyway).
GREEDY_PER_WORKER = 64


def split_by_cost(costs: np.ndarray, workers: int) -> np.ndarray:
    """Owner (0..workers-1) of each group, balancing the summed cost. Deterministic in
    ``costs`` alone, so every rank and worker computes the same split: the largest groups
    first, each to the least-loaded worker (ties: the lower id), then the rest, largest
    first, dealt out back and forth starting from the least-loaded worker."""
    n = len(costs)
    owner = np.zeros(n, np.int32)
    if workers <= 1 or n == 0:
        return owner
    # few temporaries, none wider than needed: each worker of each rank runs this over every
    # group (1.3M records, 178K groups: ~5 MB here where int64/float64 ones took ~17 MB)
    by_cost = np.argsort(np.negative(costs, dtype=np.float32), kind="stable")
    head = by_cost[:GREEDY_PER_WORKER * workers]
    loads = [(0.0, w) for w in range(workers)]
    heapq.heapify(loads)
    for g in head:
        load, w = heapq.heappop(loads)
        owner[g] = w
        heapq.heappush(loads, (load + float(costs[g]), w))
    rest = by_cost[len(head):]
    if len(rest):
        start = [w for _, w in sorted(loads)]  # least loaded first
        owner[rest] = np.resize(np.array(start + start[::-1], np.int32), len(rest))  # there and back
    return owner


def _with_pack_budget(config: Config, model) -> Config:
    """``loader.pack`` needs every sample's exact token count (a model with a tokenizer),
    and a sample longer than a pack is the filter's to handle (drop it, or fit it with
    ``filter.over_budget``): the pack's size becomes each source's ``max_tokens`` too."""
    import dataclasses

    limit = config.loader.pack.max_tokens
    if model is None or model.tokenizer_name is None:
        raise ConfigError("loader.pack: packing needs each sample's token count: configure model.name and "
                          "model.tokenizer")
    sources = [dataclasses.replace(src, filter=dataclasses.replace(
        src.filter, max_tokens=min(limit, src.filter.max_tokens or limit))) for src in config.sources]
    return dataclasses.replace(config, sources=sources)


def check_runtime(config: Config) -> None:
    """What the config names that must exist where it runs: each source's media root,
    its decoder (it imports) and, for sources that render text pages, the page font
    and NLTK's data. ConfigError now,
    in the main process, rather than in every worker."""
    from .media.backends import get_backend

    for src in config.sources:
        where = f"source {src.name!r}"
        if not storage.is_url(src.media_root) and not os.path.isdir(src.media_root):
            raise ConfigError(f"{where}: media_root {src.media_root} is not a folder")
        try:
            get_backend(src.sampling.decoder)
            if src.format == "t2vid_raw":
                from .media.pages import load_font, page_tokens  # PIL's drawing and fonts: only here

                load_font(src.sampling.pages.font, src.sampling.pages.font_size)
                page_tokens("A check.")  # NLTK and its punkt data
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _frames_bytes(outcomes: list[tuple[int, Any]]) -> int:
    """Bytes of frames a group holds: its samples share one set of clips."""
    for _, item in outcomes:
        if isinstance(item, Sample):
            return sum(int(c.frames.nbytes) for c in item.clips)
    return 0


def _same_media(records: list[tuple[int, Record]]) -> list[list[tuple[int, Record]]]:
    parts: dict[Any, list[tuple[int, Record]]] = {}
    for p, rec in records:
        parts.setdefault((rec.source, media_signature(rec)), []).append((p, rec))
    return list(parts.values())
