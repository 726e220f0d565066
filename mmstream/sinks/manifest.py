"""What a cache folder holds, and the checks that it still holds it.

Every rank keeps ``DIR/manifest.rank-R.json``, rewritten atomically after each shard:
the config, package versions and, per shard, its sample count, sha256 and the keys it
covers (kept keys, plus the keys dropped since the previous shard, with the reason).
A rerun skips exactly those keys. When every rank is complete::

    manifest = finalize(out)   # merges into DIR/manifest.json, writes trainer metadata
    report = verify(out)       # re-reads every shard; report.ok is False on any change

Trainer metadata: ``.nv-meta/`` from energon's own ``prepare`` (megatron), the T2Vid
JSON list ``data.json`` (``files`` layout), and beside every tar cache a wids shard list
``wids.json`` (``wids_version``, ``shardlist`` of relative ``url`` + ``nsamples``, and
``filesize`` + ``sha256``, which wids ignores), so
that ``wids.ShardListDataset("<out>/wids.json")`` opens the cache as it is.

A rerun trusts a completed shard only when its bytes are still those the manifest
lists (:func:`check_shards`: size, sha256, and the frame files of a ``files`` part),
hashing the shards in parallel threads.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from ..errors import MmstreamError
from ..types import Drop
from . import energon
from .atomic import WriteError, atomic_write, atomic_write_json, dump_json, makedirs
from .shards import ShardInfo, record_image_paths, sha256_file, update_content_hash
from .tarscan import UnsafeShard, name_problem, shard_keys

MANIFEST = "manifest.json"
#: Format version of the manifest files (bump on incompatible change).
MANIFEST_VERSION = 2  # 2: files-layout content hashes digest each frame file (frames shared by a group)
#: Name of the JSON list the ``files`` layout's finetune scripts read (``--data_path``).
DEFAULT_JSON_NAME = "data.json"
#: The wids shard list written beside the manifest of every tar cache.
WIDS_DESCRIPTOR = "wids.json"
#: Threads that hash completed shards on a resume (hashlib releases the GIL).
MAX_CHECK_THREADS = 8
#: Private folder for lock files.
STATE_DIR = ".mmstream"
PACKAGES = ("mmstream", "torch", "torchdata", "numpy", "pillow", "webdataset", "wids", "megatron-energon",
            "transformers", "tokenizers", "av", "decord", "pyyaml")

log = logging.getLogger(__name__)

_RANK_RE = re.compile(r"^manifest\.rank-(\d+)\.json$")


def rank_manifest_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"manifest.rank-{rank}.json")


def package_versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _drop_entry(drop: Drop) -> dict[str, Any]:
    entry = {"key": drop.key, "reason": drop.reason}
    if drop.source:
        entry["source"] = drop.source
    return entry


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def file_lock(directory: str, name: str, *, what: str, blocking: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``DIR/.mmstream/<name>`` (released even on kill -9).

    A POSIX record lock (``lockf``): forked DataLoader workers do not inherit it, so a
    rerun right after ``kill -9`` of the main process is not locked out by workers that
    have not exited yet; it also works over NFS. Non-blocking locks raise :class:`MmstreamError` when another process holds them.
    On a filesystem without locks the block runs unlocked, with a warning.
    """
    import errno
    import fcntl

    state = os.path.join(directory, STATE_DIR)
    makedirs(state)
    path = os.path.join(state, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning("%s: the filesystem does not support locks; make sure %s runs once", path, what)
            else:
                raise MmstreamError(f"{what} in {directory} is already running in another process "
                                    f"(lock {path} is held)") from None
        yield
    finally:
        os.close(fd)


# -- one rank's progress --------------------------------------------------------------

@dataclass
class RankManifest:
    """The durable progress of one rank (``manifest.rank-R.json``)."""

    directory: str
    rank: int
    world_size: int
    config: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    tail_drops: list[dict[str, Any]] = field(default_factory=list)  # dropped after the last shard
    complete: bool = False
    packages: dict[str, Optional[str]] = field(default_factory=package_versions)
    created: str = field(default_factory=_now)
    engine: str = "local"  # what ran the stages: local (DataLoader workers) or ray
    run: dict[str, Any] = field(default_factory=dict)  # the last run's progress: records, kept, dropped, samples/s

    @property
    def path(self) -> str:
        return rank_manifest_path(self.directory, self.rank)

    @property
    def config_sha256(self) -> str:
        return config_sha256(self.config)

    @classmethod
    def load(cls, directory: str, rank: int) -> Optional["RankManifest"]:
        path = rank_manifest_path(directory, rank)
        data = _read_json(path, missing_ok=True)
        if data is None:
            return None
        return cls.from_dict(directory, data, path)

    @classmethod
    def from_dict(cls, directory: str, data: dict[str, Any], path: str = "") -> "RankManifest":
        if data.get("mmstream_rank_manifest") != MANIFEST_VERSION:
            raise MmstreamError(f"{path}: not an mmstream rank manifest of version {MANIFEST_VERSION}")
        return cls(directory=directory, rank=int(data["rank"]), world_size=int(data["world_size"]),
                   config=data["config"], shards=list(data.get("shards", [])),
                   tail_drops=list(data.get("tail_drops", [])), complete=bool(data.get("complete")),
                   packages=data.get("packages", {}), created=data.get("created", ""),
                   engine=data.get("engine", "local"), run=data.get("run", {}))

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "mmstream_rank_manifest": MANIFEST_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "complete": self.complete,
            "created": self.created,
            "updated": _now(),
            "config_sha256": self.config_sha256,
            "config": self.config,
            "packages": self.packages,
            "counts": counts,
            "engine": self.engine,
            "run": self.run,
            "shards": self.shards,
            "tail_drops": self.tail_drops,
        }

    def save(self) -> None:
        atomic_write_json(self.path, self.to_dict(), indent=None)

    def add_shard(self, info: ShardInfo, drops: list[Drop]) -> None:
        """Record a committed shard and the drops since the previous one; save."""
        entry = {"name": info.name, "rank": self.rank, "index": info.index, "count": info.count,
                 "bytes": info.bytes, "sha256": info.sha256, "keys": list(info.keys),
                 "dropped": [_drop_entry(d) for d in drops]}
        if info.content_sha256 is not None:
            entry["content_sha256"] = info.content_sha256
        self.shards.append(entry)
        self.save()

    def finish(self, drops: list[Drop]) -> None:
        """Mark the rank complete, recording drops that came after its last shard."""
        self.tail_drops.extend(_drop_entry(d) for d in drops)
        self.complete = True
        self.save()

    def covered_keys(self) -> set[str]:
        """Keys a rerun must skip: kept in a committed shard or dropped and recorded."""
        keys: set[str] = set()
        for shard in self.shards:
            keys.update(shard["keys"])
            keys.update(d["key"] for d in shard.get("dropped", []))
        keys.update(d["key"] for d in self.tail_drops)
        return keys

    def next_index(self) -> int:
        return max((int(s["index"]) for s in self.shards), default=-1) + 1

    def counts(self) -> dict[str, Any]:
        return _counts(self.shards, self.tail_drops)


def _counts(shards: list[dict[str, Any]], tail_drops: list[dict[str, Any]]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for d in [d for s in shards for d in s.get("dropped", [])] + list(tail_drops):
        dropped[d["reason"]] = dropped.get(d["reason"], 0) + 1
    return {"kept": sum(int(s["count"]) for s in shards), "dropped": dict(sorted(dropped.items())),
            "dropped_total": sum(dropped.values()), "shards": len(shards)}


def load_rank_manifests(directory: str) -> list[RankManifest]:
    """Every ``manifest.rank-R.json`` in the folder, by rank."""
    out = []
    for path in glob.glob(os.path.join(glob.escape(directory), "manifest.rank-*.json")):
        if _RANK_RE.match(os.path.basename(path)):
            out.append(RankManifest.from_dict(directory, _read_json(path), path))
    return sorted(out, key=lambda m: m.rank)


def _read_json(path: str, *, missing_ok: bool = False) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise MmstreamError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise MmstreamError(f"cannot read {path}: {exc}") from None


# -- finalize -------------------------------------------------------------------------

def finalize(directory: str, *, force: bool = False) -> dict[str, Any]:
    """Merge the rank manifests into ``manifest.json`` and write the trainer metadata.

    Every rank ``0..W-1`` must be complete. Idempotent: when ``manifest.json`` already
    stands for the same rank manifests (and ``force`` is false) it is returned as is.
    """
    directory = os.path.abspath(directory)
    with file_lock(directory, "finalize.lock", what="finalize", blocking=True):
        ranks = load_rank_manifests(directory)
        inputs = _inputs_sha256(ranks)
        if not force:
            current = _read_json(os.path.join(directory, MANIFEST), missing_ok=True)
            if current and current.get("inputs_sha256") == inputs and _trainer_present(directory, current):
                return current
        manifest = merge(directory, ranks)
        manifest["inputs_sha256"] = inputs
        manifest["trainer"] = write_trainer_metadata(directory, manifest)
        atomic_write_json(os.path.join(directory, MANIFEST), manifest, indent=1)
        return manifest


def _inputs_sha256(ranks: list[RankManifest]) -> str:
    sha = hashlib.sha256()
    for m in ranks:
        d = m.to_dict()
        d.pop("updated", None)
        sha.update(dump_json(d))
    return sha.hexdigest()


def merge(directory: str, ranks: list[RankManifest]) -> dict[str, Any]:
    """The merged manifest (without trainer metadata); checks the ranks fit together."""
    if not ranks:
        raise MmstreamError(f"{directory}: no manifest.rank-*.json; run `mmstream cache` into it first")
    world = {m.world_size for m in ranks}
    if len(world) != 1:
        raise MmstreamError(f"{directory}: rank manifests disagree on the world size ({sorted(world)}); "
                            f"the folder mixes runs")
    world_size = world.pop()
    have = {m.rank for m in ranks}
    missing = sorted(set(range(world_size)) - have)
    if missing:
        raise MmstreamError(f"{directory}: rank(s) {missing} of world size {world_size} have not written a "
                            f"manifest yet; run them, then finalize")
    unfinished = [m.rank for m in ranks if not m.complete]
    if unfinished:
        raise MmstreamError(f"{directory}: rank(s) {unfinished} did not finish; rerun them (they resume), "
                            f"then finalize")
    configs = {m.config_sha256 for m in ranks}
    if len(configs) != 1:
        raise MmstreamError(f"{directory}: ranks were run with different configs; the folder mixes runs")
    shards = [s for m in ranks for s in m.shards]
    tail = [dict(d, rank=m.rank) for m in ranks for d in m.tail_drops]
    seen: dict[str, str] = {}
    for s in shards:
        for key in s["keys"]:
            if key in seen:
                raise MmstreamError(f"{directory}: key {key!r} is in both {seen[key]} and {s['name']}")
            seen[key] = s["name"]
    for s in shards:
        path = os.path.join(directory, s["name"])
        try:
            size = os.path.getsize(path)
        except OSError:
            raise MmstreamError(f"{directory}: shard {s['name']} listed by rank {s['rank']} is missing") from None
        if size != s["bytes"]:
            raise MmstreamError(f"{directory}: shard {s['name']} has {size} bytes, its rank manifest says "
                                f"{s['bytes']}; run `mmstream verify`")
    config = ranks[0].config
    output = config.get("output", {})
    return {
        "mmstream_manifest": MANIFEST_VERSION,
        "created": _now(),
        "format": output.get("format"),
        "layout": output.get("layout"),
        "world_size": world_size,
        "counts": _counts(shards, tail),
        "config_sha256": ranks[0].config_sha256,
        "engines": {str(m.rank): m.engine for m in ranks},
        "runs": {str(m.rank): m.run for m in ranks},
        "config": config,
        "packages": ranks[0].packages,
        "shards": shards,
        "tail_drops": tail,
    }


def wids_descriptor(manifest: dict[str, Any]) -> dict[str, Any]:
    """The wids shard list of a tar cache: shard URLs relative to the descriptor."""
    prefix = manifest["config"].get("output", {}).get("options", {}) or {}
    return {"wids_version": 1, "name": str(prefix.get("shard_prefix") or manifest.get("format") or "mmstream"),
            "shardlist": [{"url": s["name"], "nsamples": int(s["count"]), "filesize": int(s["bytes"]),
                           "sha256": s["sha256"]} for s in manifest["shards"] if s["name"].endswith(".tar")]}


def write_wids_descriptor(directory: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``wids.json``; returns what the manifest records of it."""
    data = dump_json(wids_descriptor(manifest), indent=1)
    atomic_write(os.path.join(directory, WIDS_DESCRIPTOR), lambda f: f.write(data))
    return {"wids": WIDS_DESCRIPTOR, "wids_sha256": hashlib.sha256(data).hexdigest()}


def write_trainer_metadata(directory: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """``.nv-meta`` (megatron) or the JSON list (files layout), and the wids shard list
    of a tar cache; returns what was written."""
    options = manifest["config"].get("output", {}).get("options", {}) or {}
    names = [s["name"] for s in manifest["shards"]]
    if manifest["layout"] != "files" and names:
        wids = write_wids_descriptor(directory, manifest)
    else:
        wids = {}
    if manifest["format"] == "megatron":
        ratio = energon.parse_split_ratio(options.get("split_ratio"))
        done = energon.prepare(directory, names, split_ratio=ratio)
        counts = {s["name"]: s["count"] for s in manifest["shards"]}
        wrong = {n: (done["shard_counts"].get(n), c) for n, c in counts.items() if done["shard_counts"].get(n) != c}
        if wrong:
            raise MmstreamError(f"energon counted different samples than the manifest (energon, manifest): {wrong}")
        return {"kind": "energon", "meta_dir": energon.META_DIR, "split_ratio": list(ratio),
                "split": done["split"], "energon_version": done["energon_version"], "command": done["command"],
                **wids}
    if manifest["layout"] == "files":
        name = str(options.get("json_name", DEFAULT_JSON_NAME))
        style = str(options.get("image_paths", "absolute"))
        if style not in ("absolute", "relative"):
            raise MmstreamError(f"output.options.image_paths: {style!r} is not absolute|relative")
        path = os.path.join(directory, name)
        sha = hashlib.sha256()
        count = 0

        def write(f):
            nonlocal count
            def emit(b: bytes):
                f.write(b)
                sha.update(b)
            emit(b"[")
            for part in names:
                for record in _read_json(os.path.join(directory, part)):
                    if style == "absolute":
                        record = _with_paths(record, lambda p: os.path.join(directory, p))
                    emit((b",\n" if count else b"\n") + dump_json(record))
                    count += 1
            emit(b"\n]\n")

        atomic_write(path, write)
        return {"kind": "json", "path": name, "image_paths": style, "count": count, "sha256": sha.hexdigest()}
    return {"kind": "webdataset", "shards": names, **wids}


def _with_paths(record: dict[str, Any], fn) -> dict[str, Any]:
    out = dict(record)
    image = record.get("image")
    if isinstance(image, str):
        out["image"] = fn(image)
    elif isinstance(image, dict):
        out["image"] = {k: fn(v) for k, v in image.items()}
    return out


def _trainer_present(directory: str, manifest: dict[str, Any]) -> bool:
    trainer = manifest.get("trainer") or {}
    if trainer.get("wids") and not os.path.isfile(os.path.join(directory, trainer["wids"])):
        return False
    if trainer.get("kind") == "energon":
        return os.path.isfile(os.path.join(directory, energon.META_DIR, ".info.json"))
    if trainer.get("kind") == "json":
        return os.path.isfile(os.path.join(directory, trainer["path"]))
    return bool(trainer)


# -- checking shards against their entries ---------------------------------------------

def check_shard(directory: str, entry: dict[str, Any]) -> Optional[str]:
    """None when the shard ``entry`` lists still holds the bytes it lists (size, sha256,
    and for a ``files`` part every frame file it names); else what differs."""
    path = os.path.join(directory, entry["name"])
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size != entry["bytes"]:
        return f"{size} bytes, manifest says {entry['bytes']}"
    try:
        sha, _ = sha256_file(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if sha != entry["sha256"]:
        return f"sha256 {sha[:16]}... differs from the manifest's {entry['sha256'][:16]}..."
    if entry.get("content_sha256"):
        problems: list[str] = []
        try:
            _check_part(directory, entry, problems)
        except MmstreamError as exc:
            problems.append(str(exc))
        if problems:
            return "; ".join(problems)
    return None


def check_shards(directory: str, entries: Sequence[dict[str, Any]], *,
                 threads: Optional[int] = None) -> list[Optional[str]]:
    """:func:`check_shard` of every entry, in order, hashed by parallel threads."""
    if not entries:
        return []
    n = threads or max(1, min(MAX_CHECK_THREADS, os.cpu_count() or 1, len(entries)))
    if n == 1:
        return [check_shard(directory, e) for e in entries]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="mmstream-check") as pool:
        return list(pool.map(lambda e: check_shard(directory, e), entries))


# -- verify ---------------------------------------------------------------------------

@dataclass
class VerifyReport:
    directory: str
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.directory}: {self.shards} shard(s), {self.samples} sample(s) checked"
        if self.ok:
            return head + ": OK"
        return head + f": {len(self.problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in self.problems)


def verify(directory: str) -> VerifyReport:
    """Re-read every shard and check it (sha256, size, sample count, keys) against
    ``manifest.json``, and the trainer metadata against the shards. A tar shard's
    members are checked from their headers first (:mod:`.tarscan`): links, devices,
    names that climb out and members larger than the shard are refused, unread."""
    directory = os.path.abspath(directory)
    manifest = _read_json(os.path.join(directory, MANIFEST), missing_ok=True)
    if manifest is None:
        raise MmstreamError(f"{directory}: no {MANIFEST}; run `mmstream finalize {directory}` first")
    report = VerifyReport(directory)
    problems = report.problems
    seen: dict[str, str] = {}
    total = 0
    shards = manifest.get("shards", [])
    for s, problem in zip(shards, check_shards(directory, shards)):
        name = s["name"]
        report.shards += 1
        if problem == "missing" or (problem or "").startswith("cannot be read"):
            problems.append(f"{name}: {problem}")
            continue
        if problem:
            problems.append(f"{name}: {problem}")
        try:
            if name.endswith(".tar"):
                keys: Optional[list[str]] = shard_keys(os.path.join(directory, name), limit=int(s["bytes"]), name=name)
                count = len(keys)
            else:
                keys, count = None, _part_count(directory, s)
        except UnsafeShard as exc:
            problems.append(str(exc))
            continue
        except (OSError, ValueError, MmstreamError) as exc:
            problems.append(f"{name}: cannot be read back ({exc})")
            continue
        report.samples += count
        total += count
        if count != s["count"]:
            problems.append(f"{name}: {count} sample(s), manifest says {s['count']}")
        if keys is not None and keys != list(s["keys"]):
            extra = sorted(set(keys) - set(s["keys"]))[:3]
            lost = sorted(set(s["keys"]) - set(keys))[:3]
            problems.append(f"{name}: keys differ from the manifest (not listed: {extra}, missing: {lost})")
        for key in s["keys"]:
            if key in seen:
                problems.append(f"key {key!r} is in both {seen[key]} and {name}")
            seen[key] = name
    kept = manifest.get("counts", {}).get("kept")
    if kept != total:
        problems.append(f"manifest counts {kept} kept sample(s), shards hold {total}")
    _verify_trainer(directory, manifest, problems)
    return report


def _verify_wids(directory: str, manifest: dict[str, Any], name: str, problems: list[str]) -> None:
    try:
        got = _read_json(os.path.join(directory, name))
    except MmstreamError as exc:
        problems.append(f"{exc} (rerun `mmstream finalize --force`)")
        return
    want = wids_descriptor(manifest)
    if not isinstance(got, dict) or got.get("wids_version") != 1 or got.get("shardlist") != want["shardlist"]:
        problems.append(f"{name}: its shard list differs from the manifest's shards (rerun `mmstream finalize "
                        f"--force`)")


def _part_count(directory: str, shard: dict[str, Any]) -> int:
    records = _read_json(os.path.join(directory, shard["name"]))
    if not isinstance(records, list):
        raise MmstreamError("not a JSON list")
    return len(records)


def _check_part(directory: str, shard: dict[str, Any], problems: list[str]) -> None:
    """A ``files``-layout part: the content hash of the frame files its records name
    (each a relative path inside the cache)."""
    records = _read_json(os.path.join(directory, shard["name"]))
    if not isinstance(records, list):
        raise MmstreamError("not a JSON list")
    content = hashlib.sha256()
    for record in records:
        for rel in record_image_paths(record):
            bad = name_problem(rel)
            if bad:
                problems.append(f"frame path {rel!r}: {bad}; refused")
                continue
            try:
                sha, size = sha256_file(os.path.join(directory, rel))
            except OSError as exc:
                problems.append(f"frame {rel} cannot be read ({exc.strerror or exc})")
                continue
            update_content_hash(content, rel, size, sha)
    if content.hexdigest() != shard["content_sha256"]:
        problems.append("frame files differ from what was written (content sha256)")


def _verify_trainer(directory: str, manifest: dict[str, Any], problems: list[str]) -> None:
    trainer = manifest.get("trainer") or {}
    if trainer.get("wids"):  # (a cache finalized before wids.json existed has none: nothing to check)
        _verify_wids(directory, manifest, trainer["wids"], problems)
    if trainer.get("kind") == "energon":
        try:
            info = energon.read_info(directory)
        except MmstreamError as exc:
            problems.append(str(exc))
            return
        counts = info.get("shard_counts", {})
        for s in manifest["shards"]:
            if counts.get(s["name"]) != s["count"]:
                problems.append(f"{energon.META_DIR}: energon indexed {counts.get(s['name'])} sample(s) in "
                                f"{s['name']}, manifest says {s['count']} (rerun `mmstream finalize`)")
        if manifest["shards"] and not trainer.get("split", {}).get("train"):
            problems.append("the energon train split is empty")
        for name in ("split.yaml", "dataset.yaml", "index.sqlite"):
            if not os.path.isfile(os.path.join(directory, energon.META_DIR, name)):
                problems.append(f"{energon.META_DIR}/{name} is missing (rerun `mmstream finalize`)")
    elif trainer.get("kind") == "json":
        path = os.path.join(directory, trainer["path"])
        try:
            sha, _ = sha256_file(path)
            records = _read_json(path)
        except (OSError, MmstreamError) as exc:
            problems.append(f"{trainer['path']}: cannot be read ({exc})")
            return
        if sha != trainer.get("sha256"):
            problems.append(f"{trainer['path']}: sha256 differs from the manifest")
        if len(records) != manifest.get("counts", {}).get("kept"):
            problems.append(f"{trainer['path']}: {len(records)} record(s), manifest counts "
                            f"{manifest.get('counts', {}).get('kept')}")
        missing = [p for r in records for p in record_image_paths(r)
                   if not os.path.isfile(p if os.path.isabs(p) else os.path.join(directory, p))]
        if missing:
            problems.append(f"{trainer['path']}: {len(missing)} image path(s) do not exist, e.g. {missing[0]}")
