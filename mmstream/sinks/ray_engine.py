"""``mmstream cache --engine ray``: the same stages, scheduled by Ray Data over decode groups.

    with RaySession(address=None, workers=None) as session:   # Ray starts in the background
        dataset = StreamingDataset(config, emit_drops=True)
        for item in ray_items(dataset, output_cfg, session):
            ...   # Encoded samples and Drops, as the DataLoader would have given them

Ray starts (a local instance, or a connection to ``address``) while the driver builds
the StreamingDataset (the index, the skip keys of a resumed run), which then goes to
the tasks pickled once. Ray Data runs one task per block of decode groups
(``GROUPS_PER_TASK``): each task reads its records, plans, applies the budget, decodes
each group once and encodes the samples (JPEG) in the Ray worker, and yields them; the
driver writes the shards and the manifest with the same writers as the local engine, so
shards are atomic and a rerun resumes from the completed ones. Groups go out costliest
first, and Ray hands the next task to whichever worker is free (a 30-minute video does not
hold a fixed share back, and does not start last), retries a
task whose worker died (``max_retries``), and starts a local Ray instance when no
``--address`` is given. A retried task yields its group's samples again; the driver keeps
each key once.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import warnings
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

#: Decode groups per Ray task: small, so that long videos balance; more than one, so that
#: the per-task overhead (tens of ms) stays small next to decoding.
GROUPS_PER_TASK = 1
#: Retries of a task whose worker process died (or raised a system error).
MAX_RETRIES = 4

_LOADED: dict[int, Any] = {}


def _dataset(payload: bytes):
    """The StreamingDataset in this Ray worker (unpickled once per worker process)."""
    key = hash(payload)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = pickle.loads(payload)
    return _LOADED[key]


def _run(batch: dict, payload: bytes, output: Any) -> Iterator[dict]:
    """One task: every group of ``batch``, each decoded once; a batch of pickled items per group."""
    import numpy as np
    import ray

    from ..errors import SampleError
    from ..media.backends import grant_cores
    from ..types import Drop, Sample
    from .formats import SampleEncoder

    # decode with this task's CPUs, not the node's (2 tasks x all cores oversubscribed it)
    grant_cores(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    ds = _dataset(payload)
    encode = SampleEncoder(output)
    for g in batch["group"]:
        g = int(g)
        outcomes = ds._run_group(ds.pipeline, g, ds.index.members(g))
        keys, items = [], []
        for _, item in outcomes:
            if isinstance(item, SampleError):
                out: Any = Drop(item.key or "", item.source or "", item.reason, item.path, item.message)
            else:
                assert isinstance(item, Sample)
                try:
                    out = encode(item)
                    out.source = item.source
                except SampleError as exc:
                    exc.with_context(key=item.key)
                    out = Drop(item.key, item.source, exc.reason, exc.path, exc.message)
            keys.append(out.key)
            items.append(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        if keys:
            yield {"key": np.array(keys, dtype=object), "item": np.array(items, dtype=object)}
    # the decode helper stays for this worker's next task (it dies with the worker)


class _NoSigtermNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_NO_SIGTERM_NOTICE = _NoSigtermNotice()  # one instance: adding it again is a no-op


def start(address: Optional[str] = None, workers: Optional[int] = None) -> dict:
    """Connect to the Ray cluster at ``address``, or start a local instance with
    ``workers`` CPUs (default: all); returns what was started."""
    try:
        import ray
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("--engine ray needs Ray: pip install 'mmstream[ray]'") from None
    # started from RaySession's thread: the driver keeps Python's own SIGTERM behaviour
    logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_NOTICE)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if ray.is_initialized():
        info = {"address": "already initialised", "started": False}
    elif address:
        ray.init(address=address, **kwargs)
        info = {"address": address, "started": False}
    else:
        ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
        info = {"address": "local", "started": True}
    import ray.data  # noqa: F401  (seconds of imports; it sets up its loggers, so quieten them after)

    for name in ("ray", "ray.data"):  # their INFO lines would break the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    return info


#: What a Ray worker imports before its first task can run (Ray Data's task code, the
#: dataset's modules: torch, transformers); a warm-up task per CPU imports them while the
#: driver still builds the index.
WARM_MODULES = ("ray.data", "pyarrow", "transformers", "mmstream.dataset", "mmstream.sinks.formats",
                "mmstream.sinks.ray_engine")


def _warm_worker() -> int:
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    return os.getpid()


class RaySession:
    """Ray, started in a background thread as soon as a run knows it will use it:

        session = RaySession(address, workers)   # returns at once
        ...                                      # the driver imports, builds the index
        ray_items(dataset, output, session)      # waits for Ray, then runs the tasks
        session.close()                          # shuts down a local instance it started

    Starting a local instance takes seconds (its processes; then each worker imports
    torch, transformers and Ray Data before its first task), which would otherwise add to
    every run's wall time; here it overlaps with the driver's own start-up, and a warm-up
    task per CPU has the workers import what the tasks need (Ray reuses those workers)."""

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None):
        self.address, self.workers = address, workers
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

            warm = ray.remote(num_cpus=1, max_retries=0)(_warm_worker)
            self._warm = [warm.remote() for _ in range(self.cpus())]
        except BaseException as exc:  # raised where the run waits for Ray
            self._error = exc
        finally:
            self._ready.set()
        self._closing.wait()
        if self.info is not None and self.info["started"]:
            import ray

            ray.shutdown()

    def cpus(self) -> int:
        """Tasks at once: ``workers``, else the cluster's CPUs."""
        import ray

        return max(1, int(self.workers or ray.cluster_resources().get("CPU", 1)))

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


def ray_items(dataset, output, session: RaySession) -> Iterator[Any]:
    """Encoded samples and Drops of ``dataset`` (a StreamingDataset), computed by Ray Data
    on ``session``'s cluster."""
    import numpy as np
    import ray
    import ray.data

    session.wait()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    # the costliest groups first (longest processing time first): what starts last is short
    order = dataset.epoch_groups(0)
    order = order[np.argsort(-dataset.index.group_cost[order], kind="stable")]
    groups = [{"group": int(g)} for g in order]
    if not groups:
        return
    payload = pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
    blocks = max(1, len(groups) // GROUPS_PER_TASK)
    with warnings.catch_warnings():
        # Ray Data has no named parameter for task retries yet; they go as remote args
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        rows = (ray.data.from_items(groups, override_num_blocks=blocks)
                .map_batches(_run, batch_size=GROUPS_PER_TASK, batch_format="numpy", zero_copy_batch=True,
                             fn_kwargs={"payload": payload, "output": output}, num_cpus=1,
                             compute=ray.data.TaskPoolStrategy(size=session.cpus()),
                             max_retries=MAX_RETRIES, retry_exceptions=False))
    # no prefetch: a block is handed over as soon as its task finishes (with the default one
    # block ahead, each group's samples waited for the next group's)
    for batch in rows.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for item in batch["item"]:
            yield pickle.loads(item)


__all__ = ["ray_items", "start", "RaySession", "GROUPS_PER_TASK", "MAX_RETRIES"]
