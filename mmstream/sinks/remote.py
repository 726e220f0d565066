"""``mmstream cache --output s3://bucket/prefix``: the cache in object storage, with the
same rule as on disk: a reader never sees a partial shard.

The run writes into a local staging mirror of the output (``output.options.staging_dir``,
default ``~/.cache/mmstream/staging/<hash of the URL>``) exactly as it writes a local
cache, and after each shard is committed there it uploads the shard under its final name
(an object store's PUT makes an object appear whole or not at all), then the rank
manifest that lists it. A rerun after a kill, on this machine or another, first brings
the rank's manifest and the shards it lists back from the bucket, deletes shards in the
bucket that no manifest lists (uploaded just before a kill), and goes on as a local
resume does. The rerun trusts no byte it has not checked: after each upload the object's
ETag is recorded in the shard's manifest entry (with the rank manifest's next write), and a shard whose object in the bucket
no longer has that ETag (changed, rewritten, or uploaded by a run that did not record
one) is downloaded again; the mirror's copy is then checked against the manifest's
sha256 like a local shard, and a shard that differs is deleted from the bucket too and
cached again. Finalizing gathers every rank's manifest and shards into the mirror, writes
the trainer metadata there (energon's ``prepare`` needs the tars) and uploads it, the
merged ``manifest.json`` last. ``mmstream verify URL`` reads everything back from the
bucket into a temporary folder and checks it there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Optional

from .. import storage
from . import manifest as mf
from .atomic import TMP_MARK
from .shards import PARTS_DIR, record_image_paths

log = logging.getLogger(__name__)


def staging_dir(url: str, options: dict) -> str:
    folder = options.get("staging_dir") or os.path.join(os.path.expanduser("~"), ".cache", "mmstream", "staging")
    return os.path.join(os.path.abspath(os.path.expanduser(folder)),
                        hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16])


class RemoteOutput:
    """The bucket side of a cache folder (``url``) and its local mirror (``local``)."""

    def __init__(self, url: str, local: str, conf: Any):
        self.url = url.rstrip("/")
        self.local = local
        self.conf = storage.settings(conf) if not isinstance(conf, storage._Settings) else conf
        self.fs, self.root = storage.filesystem(self.url, self.conf)

    def _remote(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def _exists(self, rel: str) -> bool:
        return bool(storage._retrying("looking up", self.url, lambda: self.fs.exists(self._remote(rel))))

    def upload(self, rel: str) -> None:
        """Put the mirror's ``rel`` under its final name in the bucket."""
        src = os.path.join(self.local, rel)
        storage._retrying("uploading", self.url, lambda: self.fs.put_file(src, self._remote(rel)))

    def download(self, rel: str) -> None:
        dst = os.path.join(self.local, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp-{os.getpid()}"
        storage._retrying("downloading", self.url, lambda: self.fs.get_file(self._remote(rel), tmp))
        os.replace(tmp, dst)

    def names(self) -> list[str]:
        """Every object under the output, relative to it."""
        return list(self.listing())

    def listing(self) -> dict[str, dict]:
        """``{name relative to the output: object info}`` of every object under it."""
        root = self.root.rstrip("/")
        self.fs.invalidate_cache(root)  # what the bucket holds now, not a listing cached earlier
        try:
            found = storage._retrying("listing", self.url, lambda: self.fs.find(root, detail=True))
        except Exception:  # noqa: BLE001 - an empty prefix
            return {}
        return {f[len(root) + 1:]: info for f, info in found.items() if f.startswith(root + "/")}

    def remove(self, rel: str) -> None:
        """Delete the object ``rel`` (gone already is fine)."""
        def rm():
            try:
                self.fs.rm_file(self._remote(rel))
            except FileNotFoundError:
                pass
        storage._retrying("deleting", self.url, rm)

    def etag(self, rel: str) -> Optional[str]:
        """The object's ETag (its content's fingerprint in S3), None where the store has none."""
        return object_etag(storage._retrying("looking up", self.url, lambda: self.fs.info(self._remote(rel))))

    # -- the cache run --------------------------------------------------------------------
    def upload_shard(self, info) -> None:
        """After a commit: the shard (a files-layout part: its frames first), under its final name."""
        if info.name.startswith(PARTS_DIR + "/"):
            with open(os.path.join(self.local, info.name), encoding="utf-8") as f:
                for record in json.load(f):
                    for rel in record_image_paths(record):
                        self.upload(rel)
        self.upload(info.name)

    def pull(self, rank: int) -> None:
        """Bring this rank's manifest back from the bucket, and each shard it lists unless
        the mirror has it and the object still has the ETag recorded at its upload; a
        shard no longer in the bucket is removed from the mirror too (then redone); delete
        shards in the bucket no manifest lists."""
        objects = self.listing()
        names = list(objects)
        for n in names:
            if n.startswith("manifest.rank-") and n.endswith(".json") and not os.path.exists(os.path.join(self.local, n)):
                self.download(n)
        listed = set()
        for m in mf.load_rank_manifests(self.local):
            for s in m.shards:
                listed.add(s["name"])
                if m.rank == rank:
                    self._sync(s, objects)
        self.delete_unlisted(rank, listed, names)

    def delete_unlisted(self, rank: int, listed: set[str], names: Optional[list[str]] = None) -> None:
        """Delete this rank's shards in the bucket that no manifest lists (uploaded just before
        a kill, or by a Ray writer whose result never reached the driver)."""
        from .shards import parse_shard_name

        for n in self.names() if names is None else names:
            parsed = parse_shard_name(n)
            if parsed is not None and n not in listed and (parsed["rank"] in (rank, None)):
                log.info("removing %s from the bucket: no manifest lists it (uploaded before a kill)",
                         storage.redact(f"{self.url}/{n}"))
                self.remove(n)

    def _sync(self, s: dict, objects: dict[str, dict]) -> None:
        path = os.path.join(self.local, s["name"])
        info = objects.get(s["name"])
        if info is None:  # not in the bucket: the mirror's copy must not be kept either
            if os.path.exists(path):
                log.warning("%s is listed but not in the bucket; it is cached again",
                            storage.redact(f"{self.url}/{s['name']}"))
                os.remove(path)
            return
        same = s.get("etag") is not None and object_etag(info) == s["etag"]
        if not (same and os.path.isfile(path) and os.path.getsize(path) == s["bytes"]):
            self.download(s["name"])  # checked against the manifest's sha256 next (open_rank)
        if s["name"].startswith(PARTS_DIR + "/"):
            try:
                with open(path, encoding="utf-8") as f:
                    records = json.load(f)
            except (OSError, ValueError):
                return  # a damaged part: the check against the manifest redoes it
            for record in records:
                for rel in record_image_paths(record):
                    local = os.path.join(self.local, rel)
                    got = objects.get(rel)
                    if got is not None and not (os.path.isfile(local) and os.path.getsize(local) == got.get("size")):
                        self.download(rel)

    def gather(self) -> None:
        """Every rank's manifest and shards in the mirror (to finalize)."""
        names = set(self.names())
        for n in sorted(names):
            if n.startswith("manifest.rank-") and n.endswith(".json"):
                self.download(n)
        for m in mf.load_rank_manifests(self.local):
            for s in m.shards:
                path = os.path.join(self.local, s["name"])
                if not (os.path.isfile(path) and os.path.getsize(path) == s["bytes"]):
                    self.download(s["name"])

    def upload_final(self) -> None:
        """The trainer metadata (energon's ``.nv-meta``, the files layout's JSON list) and,
        last, the merged manifest."""
        with open(os.path.join(self.local, mf.MANIFEST), encoding="utf-8") as f:
            trainer = json.load(f).get("trainer") or {}
        meta = os.path.join(self.local, trainer.get("meta_dir") or ".nv-meta")
        for d, _, files in os.walk(meta):
            for name in files:
                if TMP_MARK not in name:
                    self.upload(os.path.relpath(os.path.join(d, name), self.local))
        if trainer.get("kind") == "json":
            self.upload(trainer["path"])
        if trainer.get("wids"):
            self.upload(trainer["wids"])
        self.upload(mf.MANIFEST)


def object_etag(info: dict) -> Optional[str]:
    """The ETag in an fsspec object info (s3fs: ``ETag``; others: ``etag``, ``md5Hash``)."""
    for key in ("ETag", "etag", "md5Hash"):
        if info.get(key):
            return str(info[key])
    return None


def verify_url(url: str, conf: Any = None):
    """``mmstream verify`` of a cache in a bucket: every object read back into a temporary
    folder, then the local checks."""
    with tempfile.TemporaryDirectory(prefix="mmstream-verify-") as tmp:
        remote = RemoteOutput(url, tmp, conf)
        for rel in remote.names():
            remote.download(rel)
        report = mf.verify(tmp)
        report.directory = url
        return report
