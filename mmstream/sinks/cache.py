"""Run the stream once and cache it to shards: ``mmstream cache`` as a function.

::

    summary = run_cache("configs/t2vid.yaml", "/data/cache", workers=8)

Records are decoded in ``workers`` DataLoader processes; the main process encodes
each :class:`~mmstream.types.Sample` for the configured output and hands it to a
rotating, atomic shard writer. After every shard the rank's manifest is rewritten.

Resuming (the default): the rank's manifest lists every key already covered (kept in
a committed shard, or dropped and recorded). A rerun first checks each completed shard's
bytes against the manifest (size and sha256, a ``files`` part's frame files too; a
shard that differs is deleted and its samples are cached again: ``shards_redone`` in the
summary), deletes this rank's leftover temporary files and any shard the manifest does
not list (one renamed just before a kill), passes the covered keys to the dataset as
``skip_keys`` (skipped before any decode) and numbers new shards after the last
committed one. So a run killed at any
moment, even by ``kill -9``, and rerun with the same command ends with every kept
sample exactly once.

Several processes or machines: ``rank``/``world_size`` (default: ``RANK``/
``WORLD_SIZE`` as torchrun sets them, else ``SLURM_PROCID``/``SLURM_NTASKS``) split
the records disjointly; each rank writes its own shards and manifest, and the last
rank to finish (or ``mmstream finalize DIR``) merges them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .. import storage
from ..config import Config, load_config
from ..dist import resolve_rank
from ..errors import ConfigError, MmstreamError
from ..types import Drop
from . import manifest as mf
from .atomic import TMP_MARK, is_tmp_name, remove_quietly
from .formats import IMAGES_DIR, check_output
from .remote import RemoteOutput, staging_dir
from .shards import PARTS_DIR, FilesWriter, ShardWriter, parse_shard_name, record_image_paths, shard_name
from .sink import DUPLICATE_KEY, SampleSink  # noqa: F401  (DUPLICATE_KEY: importable from here too)

if TYPE_CHECKING:
    from .ray_engine import RaySession

log = logging.getLogger(__name__)

#: Where the stages run: DataLoader workers on this machine, or Ray workers that write their own shards.
ENGINES = ("local", "ray")
#: DataLoader workers when none are asked for: the cores, at most this many.
MAX_DEFAULT_WORKERS = 8

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$")

DatasetFactory = Callable[..., Any]


def check_model(config: Config) -> None:
    """The output format stores the model's training record: the model must write that
    record (Qwen2-VL's ChatML for megatron; the MiniCPM-V JSON for minicpmv/idefics3)."""
    from ..models import get_model

    fmt = config.output.format
    if config.model is None:
        raise ConfigError(f"output.format {fmt!r} stores the model's training record: add a `model:` section "
                          f"({'a Qwen2-VL family model' if fmt == 'megatron' else 'minicpmv-2.5/2.6 or idefics3'})")
    writes = get_model(config.model, load=False).output_format
    want = "megatron" if fmt == "megatron" else "minicpmv"
    if writes != want:
        raise ConfigError(f"output.format {fmt!r} needs a model that writes {want!r} records; "
                          f"model {config.model.name!r} writes {writes!r}")


def default_workers() -> int:
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def shard_prefix(config: Config) -> str:
    prefix = (config.output.options or {}).get("shard_prefix")
    if prefix is None:
        prefix = "pretrain" if config.output.format == "megatron" else config.output.format
    prefix = str(prefix)
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(f"output.options.shard_prefix: {prefix!r} may hold letters, digits, '_' and inner '-'")
    return prefix


def _name_for(config: Config, rank: int, world_size: int) -> Callable[[int], str]:
    prefix = shard_prefix(config)
    if config.output.layout == "files":
        return lambda i: f"{PARTS_DIR}/{shard_name(prefix, i, rank=rank, world_size=world_size, ext='json')}"
    return lambda i: shard_name(prefix, i, rank=rank, world_size=world_size, ext="tar")


def _identity(x):
    return x


def _default_factory(config: Config, **kwargs):
    from ..dataset import StreamingDataset  # imported late: only a cache run needs it
    return StreamingDataset(config, **kwargs)


def _stream_factory(config: Config, **kwargs):
    """The Ray engine's: its driver plans and ships the stream and never runs a DataLoader,
    so it does not import torch (~1.7 s of CPU while Ray's processes start on the same cores)."""
    from ..stream import Stream
    return Stream(config, **kwargs)


def run_cache(config: Union[str, os.PathLike, dict, Config], output_dir: str, *,
              workers: Optional[int] = None, rank: Optional[int] = None, world_size: Optional[int] = None,
              resume: bool = True, progress: bool = True, finalize: Union[bool, str] = "auto",
              dataset_factory: Optional[DatasetFactory] = None, engine: str = "local",
              address: Optional[str] = None, ray_session: Optional["RaySession"] = None,
              ray_actors: bool = False) -> dict[str, Any]:
    """Cache the configured stream into ``output_dir``; return a summary dict.

    ``resume=False`` deletes what this rank wrote before and starts it over.
    ``finalize``: ``"auto"`` merges the manifests once every rank is complete,
    ``True`` always (fails if a rank is missing), ``False`` never.
    ``dataset_factory(config, emit_drops=True, rank=, world_size=, skip_keys=)`` builds
    the iterable of Sample/Drop (default: :class:`mmstream.StreamingDataset`).
    ``engine``: ``local`` (DataLoader workers) or ``ray`` (Ray workers that decode and
    write their own shards, on the cluster at ``address`` or a local Ray instance;
    :mod:`.ray_engine`), on ``ray_session`` when one was started already (else one is
    started here, at once, so that Ray comes up while the index is built);
    ``ray_actors``: an actor pool (one writer per CPU) instead of tasks.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine: {engine!r} is not one of {ENGINES}")
    own = None
    if engine == "ray" and ray_session is None:
        from .ray_engine import RaySession

        own = ray_session = RaySession(address, workers or None, actors=ray_actors)
    try:
        return _run_cache(config, output_dir, workers, rank, world_size, resume, progress, finalize,
                          dataset_factory, engine, ray_session, ray_actors)
    finally:
        if own is not None:
            own.close()


def _run_cache(config, output_dir: str, workers: Optional[int], rank: Optional[int], world_size: Optional[int],
               resume: bool, progress: bool, finalize: Union[bool, str], dataset_factory: Optional[DatasetFactory],
               engine: str, ray_session: Optional["RaySession"], ray_actors: bool = False) -> dict[str, Any]:
    config = load_config(config)
    # group by group: a group's samples then reach the writer together (its frames are
    # encoded once and, in the files layout, written once); mixing is for training
    # (and one sample at a time: shards hold samples; their token counts let a trainer pack them)
    config = dataclasses.replace(config, loader=dataclasses.replace(config.loader, mix_buffer=0, pack=None))
    check_output(config.output)
    check_model(config)
    rank, world_size = resolve_rank(rank, world_size, config)
    if workers is None:  # Ray: as many tasks at once as the cluster has CPUs
        workers = 0 if engine == "ray" else default_workers()
    workers = int(workers)
    if workers < 0:
        raise ConfigError("workers must be >= 0")
    remote = None
    if storage.is_url(output_dir):  # a bucket: a local mirror, each committed shard uploaded (remote.py)
        options = config.output.options or {}
        out = staging_dir(output_dir, options)
        conf = dataclasses.replace(config.sampling.storage, options={
            **config.sampling.storage.options, **(options.get("storage_options") or {})})
        mf.makedirs(out)
        remote = RemoteOutput(output_dir, out, conf)
    else:
        out = os.path.abspath(output_dir)
        mf.makedirs(out)
    started = time.monotonic()
    with mf.file_lock(out, f"rank-{rank}.lock", what=f"cache rank {rank}"):
        if remote is not None:
            remote.pull(rank)
        redone: list[dict[str, Any]] = []
        manifest, resumed = open_rank(out, config, rank, world_size, resume=resume,
                                      on_redo=lambda entry, problem: redone.append(entry))
        if remote is not None and redone:  # the bucket: first a manifest that no longer lists them
            remote.upload(os.path.basename(manifest.path))
            for entry in redone:
                remote.remove(entry["name"])
        before = manifest.counts()
        stats = {"kept": 0, "dropped": {}, "shards": 0}
        if not manifest.complete:
            remove_quietly(os.path.join(out, mf.MANIFEST))  # the folder is changing: no longer final
            manifest.engine = engine
            stats = _cache_loop(config, out, manifest, rank, world_size, workers, progress,
                                dataset_factory or (_stream_factory if engine == "ray" else _default_factory),
                                remote, engine, ray_session, ray_actors)
    elapsed = time.monotonic() - started
    counts = manifest.counts()
    summary = {
        "output": out, "rank": rank, "world_size": world_size,
        "format": config.output.format, "layout": config.output.layout,
        "resumed": resumed, "already_done": before["kept"] + before["dropped_total"] if resumed else 0,
        "kept": counts["kept"], "dropped": counts["dropped"], "dropped_total": counts["dropped_total"],
        "shards": counts["shards"], "shards_redone": len(redone),
        "kept_this_run": stats["kept"], "dropped_this_run": stats["dropped"], "shards_this_run": stats["shards"],
        "records_read": stats.get("records_read"),
        "elapsed_s": round(elapsed, 3),
        "samples_per_s": round(stats["kept"] / elapsed, 3) if elapsed > 0 else None,
        "finalized": False, "manifest": manifest.path,
    }
    if remote is not None:
        remote.gather()  # every rank's manifest (and shards, to finalize) from the bucket
        summary["output"] = storage.redact(output_dir)
        summary["manifest"] = storage.redact(f"{output_dir.rstrip('/')}/{os.path.basename(manifest.path)}")
    if finalize is True or (finalize == "auto" and _all_ranks_complete(out, world_size)):
        t0 = time.monotonic()
        mf.finalize(out)
        if remote is not None:
            remote.upload_final()
        summary["finalized"] = True
        summary["finalize_s"] = round(time.monotonic() - t0, 3)
        summary["manifest"] = (storage.redact(f"{output_dir.rstrip('/')}/{mf.MANIFEST}") if remote is not None
                               else os.path.join(out, mf.MANIFEST))
    return summary


def _cache_loop(config: Config, out: str, manifest: mf.RankManifest, rank: int, world_size: int,
                workers: int, progress: bool, factory: DatasetFactory,
                remote: Optional["RemoteOutput"] = None, engine: str = "local",
                ray_session: Optional["RaySession"] = None, ray_actors: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    covered = manifest.covered_keys()
    pending: list[Drop] = []
    dropped: dict[str, int] = {}
    stats: dict[str, Any] = {"kept": 0, "dropped": dropped, "shards": 0}
    bar = tqdm(desc=f"cache rank {rank}/{world_size} ({engine})", unit="record", disable=not progress,
               dynamic_ncols=True)
    started = time.monotonic()

    def show() -> None:
        reasons = ",".join(f"{k}:{v}" for k, v in sorted(dropped.items()))
        bar.set_postfix_str(f"kept {stats['kept']} dropped {sum(dropped.values())}"
                            + (f" ({reasons})" if reasons else "") + f" shards {len(manifest.shards)}",
                            refresh=False)

    def record(info, upload: bool) -> None:
        """A committed shard into the manifest, with the drops since the previous one."""
        if upload and remote is not None:
            remote.upload_shard(info)  # under its final name, before a manifest lists it
        manifest.add_shard(info, pending)
        if remote is not None:
            remote.upload(os.path.basename(manifest.path))
            # the object's ETag, looked up once the manifest is up (a kill meanwhile loses
            # nothing): saved with the next manifest write; an entry without one is
            # downloaded and checked on a resume
            manifest.shards[-1]["etag"] = remote.etag(info.name)
        pending.clear()
        stats["shards"] += 1
        show()

    def drop(d: Drop) -> None:
        pending.append(d)
        dropped[d.reason] = dropped.get(d.reason, 0) + 1
        bar.update(1)
        show()

    def kept(n: int) -> None:
        stats["kept"] += n
        bar.update(n)
        show()

    dataset = factory(config, emit_drops=True, rank=rank, world_size=world_size, skip_keys=frozenset(covered))
    index = getattr(dataset, "index", None)
    if index is not None:
        stats["records_read"] = index.source_counts()
        bar.total = max(0, index.num_positions - len(covered)) if world_size == 1 else None
    try:
        if engine == "ray":
            assert ray_session is not None
            run = _ray_loop(config, out, manifest, rank, world_size, dataset, covered, remote, ray_session,
                            ray_actors, record, drop, kept)
        else:
            run = _local_loop(config, out, manifest, rank, world_size, workers, dataset, covered, record, drop, kept)
        elapsed = time.monotonic() - started
        manifest.run = {"engine": engine, "records": stats["kept"] + sum(dropped.values()), "kept": stats["kept"],
                        "dropped": dict(sorted(dropped.items())), "seconds": round(elapsed, 3),
                        "samples_per_s": round(stats["kept"] / elapsed, 3) if elapsed > 0 else None,
                        "first_item_s": None if run["first"] is None else round(run["first"] - started, 3),
                        **run["extra"]}
        manifest.finish(pending)
        if remote is not None:
            remote.upload(os.path.basename(manifest.path))
    finally:
        bar.close()
    return stats


def _local_loop(config: Config, out: str, manifest: mf.RankManifest, rank: int, world_size: int, workers: int,
                dataset: Any, covered: set[str], record: Callable, drop: Callable, kept: Callable) -> dict:
    """DataLoader workers decode and encode; this process writes every shard."""
    import torch.utils.data

    from ..dataset import EncodeSamples

    writer_cls = FilesWriter if config.output.layout == "files" else ShardWriter
    writer = writer_cls(out, _name_for(config, rank, world_size), maxcount=config.output.maxcount,
                        start_index=manifest.next_index(), on_commit=lambda info: record(info, upload=True))
    sink = SampleSink(writer, covered=covered, on_drop=drop)
    encoding = EncodeSamples(dataset, config.output, strict=config.strict)
    loader = torch.utils.data.DataLoader(encoding, batch_size=None, num_workers=workers, collate_fn=_identity)
    first = None
    with writer:
        for item in loader:
            first = first or time.monotonic()
            if sink.put(item):
                kept(1)
    return {"first": first, "extra": {}}


def _ray_loop(config: Config, out: str, manifest: mf.RankManifest, rank: int, world_size: int, dataset: Any,
              covered: set[str], remote: Optional["RemoteOutput"], session: "RaySession", actors: bool,
              record: Callable, drop: Callable, kept: Callable) -> dict:
    """Ray workers decode, encode and write their own shards; this process records the
    manifest entries they return (:mod:`.ray_engine`)."""
    from .ray_engine import WriterSpec, run_writers

    spec = WriterSpec(config.output, out, shard_prefix(config), rank, world_size, config.strict,
                      (remote.url, remote.conf) if remote is not None else None)
    names = {s["name"] for s in manifest.shards}
    writers = [p["writer"] for p in map(parse_shard_name, names) if p is not None and p["writer"] is not None]
    recorded = {k for s in manifest.shards for k in s["keys"]}  # kept keys in listed shards
    dropped_keys: set[str] = set()
    first = None
    received = written = joined = 0
    busy: dict[str, float] = {}  # seconds of work per Ray worker process
    for result, size in run_writers(dataset, spec, session, first_writer=max(writers, default=-1) + 1,
                                    actors=actors, recorded=recorded):
        if result.shards:
            first = first or time.monotonic()
        received += size
        written += result.frame_bytes
        joined += result.joined
        busy[result.worker] = busy.get(result.worker, 0.0) + result.busy_s
        for d in result.drops:
            if d.key not in covered and d.key not in dropped_keys and d.key not in recorded:
                dropped_keys.add(d.key)  # (a group redone after its writer died: once)
                drop(d)
        for info in result.shards:
            again = [k for k in info.keys if k in recorded]
            if again:  # its keys are in a recorded shard already: a writer's work done twice
                if len(again) != len(info.keys):
                    raise MmstreamError(f"shard {info.name} holds {len(again)} key(s) of recorded shards and "
                                        f"{len(info.keys) - len(again)} new one(s)")
                if info.name not in names:
                    _remove_shard(out, info.name, remote)
                continue
            if remote is None and not os.path.isfile(os.path.join(out, info.name)):
                raise MmstreamError(f"a Ray worker wrote {info.name} into {out}, which this machine does not see: "
                                    f"with several machines the output must be a shared folder or a bucket")
            names.add(info.name)
            recorded.update(info.keys)
            written += info.bytes
            kept(info.count)
            record(info, upload=False)  # the worker uploaded it (a bucket output)
    listed = {s["name"] for s in manifest.shards}
    _clean_leftovers(out, config, rank, world_size, listed)  # written by writers whose results never came
    if remote is not None:
        remote.delete_unlisted(rank, listed)
    loads = sorted(busy.values(), reverse=True)
    return {"first": first, "extra": {"writers": "actors" if actors else "tasks",
                                      "driver_bytes_received": received, "shard_bytes_written": written,
                                      "worker_busy_s": [round(b, 2) for b in loads],
                                      "clips_decoded_in_parts": joined,
                                      "busy_max_over_mean": round(loads[0] / (sum(loads) / len(loads)), 3)
                                      if loads and sum(loads) > 0 else None}}


def _remove_shard(out: str, name: str, remote: Optional["RemoteOutput"]) -> None:
    remove_quietly(os.path.join(out, name))
    if remote is not None:
        remote.remove(name)


def manifest_config(config: Config) -> dict[str, Any]:
    """The config as a manifest records it: storage secrets replaced by ``***``."""
    d = config.to_dict()
    sections = [d["sampling"]] + [src["sampling"] for src in d["sources"]]
    for sampling in sections:
        sampling["storage"]["options"] = storage.redact_options(sampling["storage"]["options"])
    for src in d["sources"]:
        src["storage_options"] = storage.redact_options(src.get("storage_options") or {})
        src["annotations"] = storage.redact(src["annotations"])
        src["media_root"] = storage.redact(src["media_root"])
    opts = d["output"].get("options") or {}
    if "storage_options" in opts:
        opts["storage_options"] = storage.redact_options(opts["storage_options"])
    return d


def open_rank(out: str, config: Config, rank: int, world_size: int, *, resume: bool,
              on_redo: Optional[Callable[[dict[str, Any], str], None]] = None) -> tuple[mf.RankManifest, bool]:
    """Load (or start) this rank's manifest and clean up after an interrupted run.

    Returns ``(manifest, resumed)``. Every completed shard is checked against its entry
    (:func:`~.manifest.check_shards`: size, sha256, a part's frame files); one that
    differs is deleted and dropped from the manifest, so that its samples are cached
    again, and ``on_redo(entry, what differs)`` is called. Deletes this rank's
    temporary files and every file that looks like one of its shards but is not listed
    (renamed just before a kill).
    """
    others = [m for m in mf.load_rank_manifests(out) if m.world_size != world_size]
    if others:
        raise MmstreamError(f"{out} holds a run with world size {others[0].world_size} (rank {others[0].rank}); "
                            f"use a new folder, or the same world size to resume it")
    config_dict = manifest_config(config)
    existing = mf.RankManifest.load(out, rank)
    if existing is not None and not resume:
        _delete_rank(out, existing)
        existing = None
    if existing is not None and existing.config_sha256 != mf.config_sha256(config_dict):
        changed = sorted(k for k in set(config_dict) | set(existing.config)
                         if mf.dump_json(config_dict.get(k)) != mf.dump_json(existing.config.get(k)))
        raise MmstreamError(f"{existing.path} was written with a different config (differs in {changed}); "
                            f"rerun with the same config, or start this rank over with --no-resume")
    resumed = existing is not None
    manifest = existing or mf.RankManifest(out, rank, world_size, config_dict)
    listed = {s["name"] for s in manifest.shards}
    # a listed shard whose bytes are not those its entry lists (gone, truncated, changed) is redone
    kept = []
    for s, problem in zip(manifest.shards, mf.check_shards(out, manifest.shards)):
        if problem is None:
            kept.append(s)
            continue
        path = os.path.join(out, s["name"])
        log.warning("%s: %s; deleted, its %d sample(s) are cached again", path, problem, s["count"])
        remove_quietly(path)
        if on_redo is not None:
            on_redo(s, problem)
    if len(kept) != len(manifest.shards):
        manifest.shards = kept
        manifest.complete = False
        listed = {s["name"] for s in kept}
    _clean_leftovers(out, config, rank, world_size, listed)
    manifest.save()  # records the rank (and its world size) from the start
    return manifest, resumed


def _is_mine(name: str, config: Config, rank: int, world_size: int) -> bool:
    parsed = parse_shard_name(name)
    if parsed is None or parsed["prefix"] != shard_prefix(config):
        return False
    return parsed["rank"] == (rank if world_size > 1 else None)


def _clean_leftovers(out: str, config: Config, rank: int, world_size: int, listed: set[str]) -> None:
    folder = os.path.join(out, PARTS_DIR) if config.output.layout == "files" else out
    rel = PARTS_DIR + "/" if config.output.layout == "files" else ""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    for name in names:
        base = name.split(TMP_MARK, 1)[0] if is_tmp_name(name) else name
        if not _is_mine(base, config, rank, world_size):
            continue
        if is_tmp_name(name) or rel + name not in listed:
            log.info("removing leftover %s", os.path.join(folder, name))
            remove_quietly(os.path.join(folder, name))
    mine = os.path.basename(mf.rank_manifest_path(out, rank))
    for name in os.listdir(out):
        if is_tmp_name(name) and name.split(TMP_MARK, 1)[0] == mine:
            remove_quietly(os.path.join(out, name))


def _delete_rank(out: str, manifest: mf.RankManifest) -> None:
    """Forget what a rank wrote (``resume=False``)."""
    for s in manifest.shards:
        path = os.path.join(out, s["name"])
        if s["name"].startswith(PARTS_DIR + "/"):
            try:
                with open(path, "rb") as f:
                    records = json.load(f)
            except (OSError, ValueError):
                records = []
            folders = {os.path.dirname(p) for r in records for p in record_image_paths(r)}
            for folder in folders:
                if folder.startswith(IMAGES_DIR + "/"):
                    shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
        remove_quietly(path)
    remove_quietly(manifest.path)


def _all_ranks_complete(out: str, world_size: int) -> bool:
    ranks = mf.load_rank_manifests(out)
    return {m.rank for m in ranks if m.complete and m.world_size == world_size} == set(range(world_size))
