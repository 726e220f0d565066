"""``mmstream cache --engine ray``: the same stages on a Ray cluster, each worker writing its
own shards.

    with RaySession(address=None, workers=None) as session:      # Ray starts in the background
        dataset = StreamingDataset(config, emit_drops=True)
        for result in run_writers(dataset, spec, session):         # shard entries and drops
            ...                                                    # the driver records them

The driver builds the StreamingDataset (the index, the skip keys of a resumed run) while
Ray starts, puts it in Ray's object store once (its index arrays are then one copy per
node, shared by the workers there), and hands out the decode groups costliest first
(:mod:`mmstream.media.cost`). A **writer** decodes each group once, encodes its samples
(JPEG) and writes them with the local engine's writer classes into the output folder (a
folder every node sees) or, for a bucket, into its node's staging mirror, uploading each
shard when it is committed; it returns only the **manifest entries** (shard name, count,
bytes, sha256, keys) and the drops, so frames never pass through the driver. The driver
merges the entries into the rank manifest as they arrive, and finalizing writes energon's
metadata as for the local engine. Writers name their shards ``PREFIX-w<writer>-<n>.tar``
(:func:`.shards.shard_name`), a writer id never used twice in an output folder.

Two kinds of writers:

* **tasks** (default): one Ray task per batch of groups, its shards committed when it
  ends. Batches are cut from the costliest groups on (a large group alone), each holding
  ``1 / (GUIDED x CPUs)`` of the cost still to plan (guided scheduling: large batches
  first, small ones last, so the writers finish together) but no less than ``1 /
  (SMALLEST x CPUs)`` of the whole, and at most ``maxcount`` samples. A task whose worker or node dies is run again by Ray (``MAX_RETRIES``) under the
  same writer id, so it writes the same names again. A group holding a large share of the
  run's cost (:func:`parts_for`) is a batch of its own whose long clips are decoded in
  parts: **part tasks** decode all but the first part (:meth:`StreamingDataset.decode_part`)
  while the writer task decodes the first, then takes their frames from the object store
  and joins them (:mod:`mmstream.media.split`); a part that failed is decoded by the writer.
* **actors** (``--ray-actors``): one actor per CPU, one group per call and one call at a
  time per actor (a 30-minute video never holds a short group back), shards rotating at
  ``maxcount`` across calls. An actor that dies (its node removed) loses its open shard:
  the groups with samples in it go to the other actors (skipping the keys already
  recorded) and a new actor takes its place.

A shard written by a writer whose result never reached the driver is listed by no
manifest: it is deleted at the end of the run (and by a rerun), so every key is in
exactly one listed shard.
"""
from __future__ import annotations

import collections
import importlib.util
import logging
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)

#: Task mode: a batch of groups holds 1 / (GUIDED x CPUs) of the cost not yet planned...
GUIDED = 2
#: ...and no less than 1 / (SMALLEST x CPUs) of the whole (batches are shards: not too many).
SMALLEST = 16
#: Runs of a task whose worker process or node died (Ray's retries).
MAX_RETRIES = 4
RAY_MISSING = "--engine ray needs Ray: pip install 'mmstream[ray]'"
#: What a Ray worker imports before its first group can run (the stream's modules, not torch);
#: a warm-up task per CPU imports them while the driver still builds the index.
WARM_MODULES = ("mmstream.stream", "mmstream.sinks.formats", "mmstream.sinks.ray_engine")


def require_ray() -> None:
    """A ConfigError with the install line when Ray cannot be imported (checked without
    importing it: that takes seconds)."""
    from ..errors import ConfigError

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken install, or a module hidden in sys.modules
        found = False
    if not found:
        raise ConfigError(RAY_MISSING)


@dataclass
class WriterSpec:
    """What every writer needs to write a rank's shards (pickled to the workers)."""

    output: Any  # OutputConfig
    out: str  # the output folder, or the staging mirror of a bucket (its path on every node)
    prefix: str
    rank: int
    world_size: int
    strict: bool = False
    remote: Optional[tuple] = None  # (url, storage settings) of a bucket output: upload on commit

    def name_for(self, writer: int):
        from .shards import PARTS_DIR, shard_name

        if self.output.layout == "files":
            return lambda i: f"{PARTS_DIR}/" + shard_name(self.prefix, i, rank=self.rank, world_size=self.world_size,
                                                          ext="json", writer=writer)
        return lambda i: shard_name(self.prefix, i, rank=self.rank, world_size=self.world_size, writer=writer)


@dataclass
class Result:
    """What a writer hands the driver: committed shards (ShardInfo), drops, samples written,
    the groups with samples in its still open shard, and the groups it finished."""

    shards: list = field(default_factory=list)
    drops: list = field(default_factory=list)
    kept: int = 0
    open: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    writer: int = -1
    frame_bytes: int = 0  # files layout: frame files written (a shard's bytes count its part only)
    worker: str = ""  # the Ray worker process (node and pid) that did it
    busy_s: float = 0.0  # seconds it spent on it
    joined: int = 0  # clips decoded in parts (with part tasks) and joined here


class Writer:
    """A writer's state in a Ray worker: the dataset, an encoder and a rotating shard writer.
    ``Writer()`` only imports what a writer needs (an actor started while the driver still
    builds the index); :meth:`open` then gives it its dataset and writer id."""

    def __init__(self, dataset: Any = None, spec: Optional[WriterSpec] = None, writer: int = -1,
                 modules: tuple[str, ...] = WARM_MODULES):
        _warm_worker(modules)
        if spec is not None:
            self.open(dataset, spec, writer)

    def open(self, dataset: Any, spec: WriterSpec, writer: int) -> None:
        from .formats import SampleEncoder
        from .remote import RemoteOutput
        from .shards import FilesWriter, ShardWriter
        from .sink import SampleSink

        self.where = _take_worker()
        self.dataset = dataset
        self.spec = spec
        self.id = writer
        self.encode = SampleEncoder(spec.output)
        self.remote = RemoteOutput(spec.remote[0], spec.out, spec.remote[1]) if spec.remote else None
        os.makedirs(spec.out, exist_ok=True)
        cls = FilesWriter if spec.output.layout == "files" else ShardWriter
        self.writer = cls(spec.out, spec.name_for(writer), maxcount=spec.output.maxcount, on_commit=self._commit)
        self.result = Result(writer=writer, worker=self.where)
        self.sink = SampleSink(self.writer, on_drop=self.result.drops.append)
        self._open: set[int] = set()

    def _commit(self, info) -> None:
        if self.remote is not None:
            self.remote.upload_shard(info)  # under its final name, before the driver lists it
        self.result.shards.append(info)
        self._open = set()

    def run(self, groups: list[int], skip: Optional[list[str]] = None, parts: Optional[list] = None) -> Result:
        """Decode, encode and write ``groups`` (passing over the keys in ``skip``: already in
        a recorded shard); the entries committed meanwhile. ``parts``: a group of one whose
        long clips the :func:`_part` tasks behind these (boxed) refs decode in part with this writer."""
        from ..pipeline import Parts

        t0 = time.monotonic()
        ds = self.dataset
        if skip:
            ds.skip_keys = frozenset(ds.skip_keys) | frozenset(skip)
        waited: list[float] = []  # seconds spent waiting for the parts (its CPU lent to Ray meanwhile)
        if parts:
            ds.pipeline.parts = Parts(len(parts) + 1, _fetch_once(parts, waited))
        try:
            for g in groups:
                self._group(ds, int(g))
        finally:
            if ds.pipeline.parts is not None:
                self.result.joined += ds.pipeline.parts.joined
            ds.pipeline.parts = None
        self.result.busy_s += time.monotonic() - t0 - sum(waited)
        return self._take()

    def _group(self, ds, g: int) -> None:
        from ..errors import SampleError
        from ..types import Drop
        from .sink import encode_item

        kept = self.sink.kept
        for _, item in ds._run_group(ds.pipeline, g, ds.index.members(g)):
            if isinstance(item, SampleError):
                item = Drop(item.key or "", item.source or "", item.reason, item.path, item.message)
            out = encode_item(self.encode, item, strict=self.spec.strict)
            if self.sink.put(out) and out.files:
                self.result.frame_bytes += sum(len(data) for _, data in out.files)
        if self.sink.kept > kept:
            self._open.add(g)
        self.result.groups.append(g)

    def close(self) -> Result:
        """Commit the open shard; the last entries."""
        t0 = time.monotonic()
        self.writer.close()
        self.result.busy_s += time.monotonic() - t0
        return self._take()

    def _take(self) -> Result:
        out, self.result = self.result, Result(writer=self.id, worker=self.where)
        self.sink.on_drop = self.result.drops.append
        out.kept = self.sink.kept
        self.sink.kept = 0
        out.open = sorted(self._open)
        return out


_LOADED: dict[str, Any] = {}


def _dataset(boxed: list) -> Any:
    """The dataset behind ``boxed[0]`` (an ObjectRef, boxed so that Ray does not resolve it
    for every task): fetched once per worker process, which runs many tasks."""
    import ray

    key = boxed[0].hex()
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = ray.get(boxed[0])
    return _LOADED[key]


def _fetch_once(refs: list, waited: list[float]):
    """What the part tasks behind ``refs`` decoded, fetched on the first call (after this
    writer decoded its own part; the seconds it waited added to ``waited``); a part whose
    task failed for good comes back empty, and the writer decodes that clip whole."""
    got: list = []

    def fetch() -> list[dict]:
        import ray

        if not got:
            t0 = time.monotonic()
            for ref in refs:
                try:
                    got.append(ray.get(ref))
                except Exception as exc:  # its worker or node died more often than retried
                    log.warning("a part decode failed (%s): its clip is decoded whole by the writer", exc)
                    got.append({})
            waited.append(time.monotonic() - t0)
        return got

    return fetch


def _part(boxed: list, g: int, part: int, parts: int) -> tuple[dict, Result]:
    """A task: part ``part`` of ``parts`` of group ``g``'s long clips (frames, through
    Ray's object store to the writer task that joins them; never to the driver), and a
    Result for the driver that says only who did it and for how long."""
    t0 = time.monotonic()
    where = _take_worker()
    ds = _dataset(boxed)
    found = ds.decode_part(ds.pipeline, g, part, parts)
    return found, Result(worker=where, busy_s=time.monotonic() - t0)


def _take_worker() -> str:
    """Decode with this Ray worker's CPUs, not the node's (2 tasks x all cores oversubscribed
    it); the worker's name in results (node and pid)."""
    import ray

    from ..media.backends import grant_cores

    context = ray.get_runtime_context()
    grant_cores(context.get_assigned_resources().get("CPU", 1))
    return f"{context.get_node_id()[:8]}:{os.getpid()}"


def parts_for(cost: float, total: float, cpus: int, max_parts: int) -> int:
    """Parts to decode a group in: one per ``1 / (GUIDED x cpus)`` of the run's cost it
    holds, at most ``max_parts`` and the CPUs (a 30-minute video among short ones: the
    run would otherwise wait for the one worker decoding it)."""
    if total <= 0:
        return 1
    return max(1, min(cpus, max_parts, int(cost * GUIDED * cpus // total)))


def _task(boxed: list, spec: WriterSpec, writer: int, groups: list[int], parts: Optional[list] = None) -> Result:
    """A task: a fresh writer for ``groups``, its shards committed at the end (``parts``:
    see :meth:`Writer.run`)."""
    w = Writer(_dataset(boxed), spec, writer)
    first = w.run(groups, parts=parts)
    last = w.close()
    first.shards += last.shards
    first.drops += last.drops
    first.kept += last.kept
    first.frame_bytes += last.frame_bytes
    first.busy_s += last.busy_s
    first.joined += last.joined
    first.open = []
    return first


def plan_batches(order: np.ndarray, costs: np.ndarray, sizes: np.ndarray, cpus: int, maxcount: int) -> list[list[int]]:
    """Groups (``order``: costliest first) cut into task batches: each holds ``1 / (GUIDED x
    cpus)`` of the cost not yet in a batch, at least ``1 / (SMALLEST x cpus)`` of the whole,
    and at most ``maxcount`` records (a group larger than that: a batch of its own)."""
    cpus = max(1, cpus)
    left = float(costs.sum())
    floor = left / (SMALLEST * cpus)
    batches: list[list[int]] = []
    cur: list[int] = []
    cost = count = 0.0
    target = max(left / (GUIDED * cpus), floor)
    for g, c, n in zip(order.tolist(), costs.tolist(), sizes.tolist()):
        if cur and (cost + c > target or count + n > maxcount):
            batches.append(cur)
            left -= cost
            target = max(left / (GUIDED * cpus), floor)
            cur, cost, count = [], 0.0, 0.0
        cur.append(g)
        cost += c
        count += n
    if cur:
        batches.append(cur)
    return batches


def run_writers(dataset: Any, spec: WriterSpec, session: "RaySession", *, first_writer: int = 0,
                actors: bool = False, recorded: Optional[set[str]] = None) -> Iterator[tuple[Result, int]]:
    """Every writer's results, as they arrive, with their size in bytes (what the driver
    received). ``recorded``: the keys in shards the driver has recorded so far (read as the
    run goes, for groups an actor must redo)."""
    import ray

    session.wait()
    # the costliest groups first (longest processing time first): what starts last is short
    order = dataset.epoch_groups(0)
    order = order[np.argsort(-dataset.index.group_cost[order], kind="stable")]
    if not len(order):
        return
    ref = ray.put(dataset.as_stream())  # the workers never import torch
    cpus = session.cpus()
    counter = iter(range(first_writer, 1 << 62))
    if actors:
        yield from _run_actors(ref, dataset, spec, order, session.actors(), counter,
                               recorded if recorded is not None else set())
        return
    sizes = np.diff(dataset.index.group_start)[order]
    costs = dataset.index.group_cost
    total = float(costs[order].sum())
    batches = collections.deque(plan_batches(order, costs[order], sizes, cpus, spec.output.maxcount))
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_task)
    part_task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False, num_returns=2)(_part)
    running: dict = {}  # writer tasks, and part tasks' small results (their frames go to the writer)
    while batches or running:
        while batches and len(running) < cpus:  # one task per CPU at a time: the order holds
            batch = batches.popleft()
            n = parts_for(float(costs[batch[0]]), total, cpus, session.max_parts) if len(batch) == 1 else 1
            # the other parts first: the writer blocks on them (lending Ray its CPU) once its own is done
            helpers = [part_task.remote([ref], batch[0], k, n) for k in range(1, n)]
            running.update((who, True) for _, who in helpers)
            running[task.remote([ref], spec, next(counter), batch, [f for f, _ in helpers] or None)] = True
        done, _ = ray.wait(list(running), num_returns=1, fetch_local=False)
        del running[done[0]]
        yield _received(_get(done[0]))


def _actor_class():
    import ray

    return ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(Writer)


def _run_actors(ref, dataset, spec: WriterSpec, order: np.ndarray, started: list, counter, recorded: set[str]):
    import ray
    from ray.exceptions import RayActorError

    actor_cls = _actor_class()
    queue = collections.deque((int(g), None) for g in order)
    open_of: dict[int, list[int]] = {}  # actor slot -> groups with samples in its open shard
    actors: dict[int, Any] = {}
    busy: dict = {}  # call -> (slot, groups or None for a close)
    closed: set[int] = set()
    slots = iter(range(1 << 62))

    def start_actor(actor=None) -> None:
        slot = next(slots)
        actors[slot] = actor or actor_cls.remote()
        actors[slot].open.remote(ref, spec, next(counter))  # (its calls run in order: open first)
        open_of[slot] = []

    for actor in started:  # the session's actors, importing since Ray started
        start_actor(actor)
    while True:
        idle = [s for s in actors if s not in closed and all(v[0] != s for v in busy.values())]
        for slot in idle:
            if queue:
                g, skip = queue.popleft()
                busy[actors[slot].run.remote([g], skip)] = (slot, [g])
            elif not busy or all(v[1] is None for v in busy.values()):  # the work is done: close them
                busy[actors[slot].close.remote()] = (slot, None)
        if not busy:
            break
        done, _ = ray.wait(list(busy), num_returns=1)
        slot, groups = busy.pop(done[0])
        try:
            result = _get(done[0])
        except RayActorError:
            # its open shard is lost: its groups go to the others, minus the keys recorded since
            lost = sorted(set(open_of.pop(slot, [])) | set(groups or []))
            log.warning("Ray writer %d died (node lost?): its %d group(s) not in a committed shard go to others",
                        slot, len(lost))
            del actors[slot]
            closed.clear()  # the others take the work again (and are closed again at the end)
            for g in lost:
                skip = [k for k in (dataset.index.key(int(p)) for p in dataset.index.members(g)) if k in recorded]
                queue.appendleft((g, skip or None))
            if len(actors) < _alive_cpus():  # a new writer where there is room
                start_actor()
            if not actors:
                raise RuntimeError("every Ray writer died and the cluster has no CPU left for a new one")
            continue
        if groups is None:
            closed.add(slot)
            open_of[slot] = []
        else:
            open_of[slot] = result.open
        yield _received(result)
    for a in actors.values():
        ray.kill(a)


def _alive_cpus() -> int:
    """CPUs of the nodes alive now (a removed node's are gone at once, unlike the totals)."""
    import ray

    return int(sum(n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")))


def _get(ref):
    """``ray.get``, with a task's own error (a SampleError in strict mode, a WriteError)
    raised as itself."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        from ..errors import MmstreamError

        if isinstance(cause, MmstreamError):
            raise cause from None
        raise


def _received(result: Result) -> tuple[Result, int]:
    return result, len(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


class _NoSigtermNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_NO_SIGTERM_NOTICE = _NoSigtermNotice()  # one instance: adding it again is a no-op


def start(address: Optional[str] = None, workers: Optional[int] = None) -> dict:
    """Connect to the Ray cluster at ``address`` (else at ``RAY_ADDRESS``, as Ray's job
    submission sets it), or start a local instance with ``workers`` CPUs (default: all);
    returns what was started. A local instance is started even where another cluster runs
    on this machine (``ray start``): Ray's own default would join that one instead."""
    require_ray()
    import ray

    # started from RaySession's thread: the driver keeps Python's own SIGTERM behaviour
    logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_NOTICE)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if ray.is_initialized():
        info = {"address": "already initialised", "started": False}
    elif address or os.environ.get("RAY_ADDRESS"):
        address = address or os.environ["RAY_ADDRESS"]
        ray.init(address=address, **kwargs)
        info = {"address": address, "started": False}
    else:
        ray.init(address="local", num_cpus=workers or os.cpu_count(), **kwargs)
        info = {"address": "local", "started": True}
    logging.getLogger("ray").setLevel(logging.WARNING)  # its INFO lines would break the progress bar
    return info


def warm_modules(config: Any = None) -> tuple[str, ...]:
    """What the writers of ``config`` import: :data:`WARM_MODULES`, and transformers where
    the model has a tokenizer (~0.7 s of import a worker, on CPUs the first groups wait for)."""
    needs = config is None or getattr(config.model, "tokenizer", None) is not None
    return (("transformers",) if needs else ()) + WARM_MODULES


def _warm_worker(modules: tuple[str, ...] = WARM_MODULES) -> int:
    import importlib

    for name in modules:
        importlib.import_module(name)
    return os.getpid()


class RaySession:
    """Ray, started in a background thread as soon as a run knows it will use it:

        session = RaySession(address, workers)   # returns at once
        ...                                      # the driver imports, builds the index
        run_writers(dataset, spec, session)      # waits for Ray, then runs the writers
        session.close()                          # shuts down a local instance it started

    Starting a local instance takes seconds (its processes; then each worker imports the
    stream's modules, and transformers where a tokenizer counts, before its first task),
    which would otherwise add to every run's wall time; here it overlaps with the driver's
    own start-up, and a warm-up task per CPU has the workers import what the writers need
    (Ray reuses those workers), or, with ``actors``, the writer actors start at once and
    import it themselves.
    Raises a ConfigError naming the install line at once when Ray is not installed."""

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, actors: bool = False,
                 max_parts: Optional[int] = None, modules: Optional[tuple[str, ...]] = None):
        require_ray()
        self.address, self.workers, self.use_actors = address, workers, actors
        self.modules = modules if modules is not None else warm_modules()  # what the workers import first
        #: tasks: a video holding a large share of the run is decoded in up to this many parts
        #: at once (:func:`parts_for`; None: the CPUs, 1: never split)
        self.max_parts = max_parts if max_parts is not None else 1 << 30
        self.info: Optional[dict] = None
        self._error: Optional[BaseException] = None
        self._warm: list = []  # the warm-up tasks' results (held, not awaited)
        self._ready, self._closing = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._start, name="mmstream-ray-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        # this thread stays until close(): Ray's local processes are started with a
        # parent-death signal, which the kernel sends when the *thread* that started them ends
        try:
            self.info = start(self.address, self.workers)
            import ray

            if self.use_actors:  # the writers themselves, importing what they need meanwhile
                cls = _actor_class()
                self._warm = [cls.remote(modules=self.modules) for _ in range(self.cpus())]
            else:
                warm = ray.remote(num_cpus=1, max_retries=0)(_warm_worker)
                self._warm = [warm.remote(self.modules) for _ in range(self.cpus())]
        except BaseException as exc:  # raised where the run waits for Ray
            self._error = exc
        finally:
            self._ready.set()
        self._closing.wait()
        if self.info is not None and self.info["started"]:
            import ray

            ray.shutdown()

    def cpus(self) -> int:
        """Writers at once: ``workers``, else the cluster's CPUs."""
        import ray

        return max(1, int(self.workers or ray.cluster_resources().get("CPU", 1)))

    def actors(self) -> list:
        """The writer actors started with the session (``actors=True``), one per CPU; else
        as many new ones."""
        self.wait()
        if self.use_actors:
            return list(self._warm)
        cls = _actor_class()
        return [cls.remote() for _ in range(self.cpus())]

    def wait(self) -> dict:
        """Block until Ray is up; what was started (or the error starting it)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.info is not None
        return self.info

    def close(self) -> None:
        """Shut down the local instance this session started (a cluster's stays up)."""
        self._closing.set()
        self._thread.join()

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["run_writers", "start", "RaySession", "WriterSpec", "Writer", "Result", "plan_batches",
           "require_ray", "MAX_RETRIES", "GUIDED", "SMALLEST"]
