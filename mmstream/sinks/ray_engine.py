"""``mmstream cache --engine ray``: the same stages, scheduled by Ray Data over decode groups.

    for item in ray_items(dataset, output_cfg, address=None, workers=None):
        ...   # Encoded samples and Drops, as the DataLoader would have given them

The driver builds the StreamingDataset (the index, the skip keys of a resumed run) and
puts it in Ray's object store once. Ray Data runs one task per block of decode groups
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

    from ..errors import SampleError
    from ..types import Drop, Sample
    from .formats import SampleEncoder

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


def start(address: Optional[str] = None, workers: Optional[int] = None) -> dict:
    """Connect to the Ray cluster at ``address``, or start a local instance with
    ``workers`` CPUs (default: all); returns what was started."""
    try:
        import ray
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("--engine ray needs Ray: pip install 'mmstream[ray]'") from None
    for name in ("ray", "ray.data"):  # its own INFO lines would break the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return {"address": "already initialised", "started": False}
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        return {"address": address, "started": False}
    ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
    return {"address": "local", "started": True}


def ray_items(dataset, output, *, address: Optional[str] = None, workers: Optional[int] = None) -> Iterator[Any]:
    """Encoded samples and Drops of ``dataset`` (a StreamingDataset), computed by Ray Data."""
    import numpy as np
    import ray
    import ray.data

    started = start(address, workers)
    try:
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
        # as many tasks at once as there are CPUs (Ray Data's own budget keeps a share back)
        cpus = max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        rows = (ray.data.from_items(groups, override_num_blocks=blocks)
                .map_batches(_run, batch_size=GROUPS_PER_TASK, batch_format="numpy", zero_copy_batch=True,
                             fn_kwargs={"payload": payload, "output": output}, max_retries=MAX_RETRIES,
                             retry_exceptions=False, num_cpus=1, concurrency=cpus))
        for row in rows.iter_rows():
            yield pickle.loads(row["item"])
    finally:
        if started["started"]:
            ray.shutdown()


__all__ = ["ray_items", "start", "GROUPS_PER_TASK", "MAX_RETRIES"]
