"""Media and annotations in object storage (``s3://``, ``gs://``, ``http(s)://``, ``hf://``...),
read through fsspec with range requests, a read-ahead, timeouts and bounded retries.

    with using(sampling.storage):                 # the storage settings of a source
        with open_media(url) as f: ...            # a seekable file object (or a local cache copy)
    kind_of(url)                                  # "file" | "dir" | None, one HEAD/LIST
    redact(text)                                  # credentials out of a URL or a message

Local paths go through unchanged. A remote object is read with range requests of
``read_ahead_mb`` blocks, the last 64 kept; while reads run on sequentially each request
doubles, up to ``read_ahead_max_mb`` (:func:`_run_cache_class`), and an MP4's
timestamps come from its index (:mod:`mmstream.media.mp4index`): sparse sampling reads a
fraction of a long video. Each request has the filesystem's own timeout (``timeout_s``) and is retried
``retries`` times with exponential backoff; an object that does not exist is
``missing_media``, one that keeps failing ``read_error``. With ``cache_dir`` set, a remote
object is copied there whole on first use and read locally afterwards (a second epoch
reads no network); the folder is bounded by ``cache_max_gb``, least recently used first,
and safe for several processes on one node (copies are written under a temporary name
and renamed; eviction holds a lock). Bytes fetched are counted (``timing`` counters
``bytes_read`` and ``object_bytes``) for ``mmstream bench``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from . import timing
from .errors import MISSING_MEDIA, ConfigError, SampleError

log = logging.getLogger(__name__)

READ_ERROR = "read_error"  # a remote object that keeps failing (timeouts, 5xx) after the retries

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO_RE = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY_RE = re.compile(r"(?i)([?&](?:x-amz-[a-z-]*signature|x-amz-credential|x-amz-security-token|signature|"
                              r"sig|token|access_token|key|secret)=)[^&\s'\"]+")
#: ``storage.options`` keys whose values are secrets (never written to a manifest or a log).
SECRET_KEYS = re.compile(r"(?i)(secret|password|token|key$|^key|credential|session)")


def is_url(path: Optional[str]) -> bool:
    """A remote location (``scheme://``), not a local path (``file://`` counts as local)."""
    return bool(path) and bool(_URL_RE.match(str(path))) and not str(path).startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://"):] if str(path).startswith("file://") else path


def redact(text: Any) -> str:
    """``text`` with URL user info (``user:pass@``) and signed-URL secrets replaced by ``***``."""
    text = _USERINFO_RE.sub("***@", str(text))
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + "***", text)


def redact_options(options: dict) -> dict:
    """Storage options for a manifest: secret values replaced by ``"***"``."""
    out = {}
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            out[k] = redact_options(v)
        elif SECRET_KEYS.search(str(k)):
            out[k] = "***"
        else:
            out[k] = redact(v) if isinstance(v, str) else v
    return out


def join(root: str, rel: str) -> str:
    """``rel`` under the URL ``root``, normalised; raises ``path_outside_root`` if ``..``
    climbs out of it (the same lexical rule as for local paths). An absolute URL in
    ``rel`` must itself lie under ``root``."""
    from .errors import PATH_OUTSIDE_ROOT

    root = root.rstrip("/")
    if is_url(rel):
        scheme, _, rest = rel.partition("://")
    else:
        scheme, _, base = root.partition("://")
        rest = posixpath.join(base, rel)
    full = f"{scheme}://{posixpath.normpath(rest)}"
    if full != root and not full.startswith(root + "/"):
        raise SampleError(PATH_OUTSIDE_ROOT, f"{redact(rel)!r} resolves outside media root {redact(root)}",
                          path=redact(full))
    return full


# -- settings of the current source ---------------------------------------------------------

@dataclass
class _Settings:
    options: dict = field(default_factory=dict)
    timeout_s: float = 30.0
    retries: int = 3
    read_ahead_mb: float = 0.25
    read_ahead_max_mb: float = 4.0
    cache_dir: Optional[str] = None
    cache_max_gb: Optional[float] = 50.0


_current = _Settings()


def settings(cfg: Any) -> _Settings:
    """The settings of a :class:`~mmstream.config.StorageConfig`."""
    if cfg is None:
        return _Settings()
    return _Settings(dict(cfg.options or {}), float(cfg.timeout_s), int(cfg.retries), float(cfg.read_ahead_mb),
                     float(cfg.read_ahead_max_mb), cfg.cache_dir, cfg.cache_max_gb)


@contextlib.contextmanager
def using(cfg: Any) -> Iterator[None]:
    """Make ``cfg`` (a :class:`~mmstream.config.StorageConfig`) the settings for what this
    process opens meanwhile."""
    global _current
    before = _current
    if cfg is not None:
        _current = settings(cfg)
    try:
        yield
    finally:
        _current = before


_FS: dict[tuple, Any] = {}


def filesystem(url: str, conf: Optional[_Settings] = None):
    """(fsspec filesystem, path inside it) for ``url``, one filesystem per protocol and
    options per process, with per-request timeouts."""
    import fsspec

    s = conf or _current
    protocol = url.split("://", 1)[0].lower()
    opts = dict(s.options)
    if protocol in ("s3", "s3a"):
        cfg = dict(opts.pop("config_kwargs", {}) or {})
        cfg.setdefault("connect_timeout", s.timeout_s)
        cfg.setdefault("read_timeout", s.timeout_s)
        cfg.setdefault("retries", {"max_attempts": 1, "mode": "standard"})  # the retries are ours
        opts["config_kwargs"] = cfg
    elif protocol in ("http", "https"):
        import aiohttp

        client = dict(opts.pop("client_kwargs", {}) or {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=s.timeout_s,
                                                            sock_read=s.timeout_s))
        opts["client_kwargs"] = client
    key = (protocol, repr(sorted((k, repr(v)) for k, v in opts.items())), os.getpid())
    if key not in _FS:
        try:
            fs, _ = fsspec.core.url_to_fs(url, **opts)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot read {redact(url)}: {redact(exc)} (install the filesystem: "
                              f"pip install 'mmstream[storage]')") from None
        _FS[key] = fs
    fs = _FS[key]
    return fs, fs._strip_protocol(url)


def _retrying(what: str, url: str, fn):
    """``fn()`` with bounded retries and exponential backoff: FileNotFoundError is
    ``missing_media`` at once; other failures, after the retries, ``read_error``."""
    s = _current
    delay = 0.2
    for attempt in range(s.retries + 1):
        try:
            return fn()
        except FileNotFoundError as exc:
            if _really_missing(exc):
                raise SampleError(MISSING_MEDIA, "no such object", path=redact(url)) from None
            failure: Exception = exc.__cause__ or exc  # fsspec's HTTP lookup reports a timeout as "not found"
            if attempt == s.retries:
                raise SampleError(READ_ERROR, f"{what} failed {s.retries + 1} times: {type(failure).__name__}: "
                                  f"{redact(failure)}"[:500], path=redact(url)) from None
            time.sleep(delay)
            delay *= 2
            continue
        except PermissionError as exc:
            raise SampleError(READ_ERROR, f"{what}: access denied ({redact(exc)})", path=redact(url)) from None
        except SampleError:
            raise
        except Exception as exc:  # noqa: BLE001 - timeouts, connection errors, 5xx: all transient until proven
            if attempt == s.retries:
                raise SampleError(READ_ERROR, f"{what} failed {s.retries + 1} times: {type(exc).__name__}: "
                                  f"{redact(exc)}"[:500], path=redact(url)) from None
            log.info("%s %s failed (%s), retrying in %.1f s", what, redact(url), type(exc).__name__, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _really_missing(exc: FileNotFoundError) -> bool:
    """A 404 (or a filesystem's own not-found), not a timeout or a failing server that a
    filesystem reports as not found."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, FileNotFoundError):
        return True
    status = getattr(cause, "status", None) or getattr(cause, "code", None)
    return status in (404, 410)


def kind_of(url: str) -> Optional[str]:
    """``"file"``, ``"dir"`` or None (nothing there) for a remote URL."""
    fs, path = filesystem(url)

    def info():
        try:
            return fs.info(path)
        except FileNotFoundError as exc:
            if _really_missing(exc):
                return None
            raise

    got = _retrying("looking up", url, info)
    if got is None:
        return None
    if got.get("type") == "directory":
        return "dir"
    _remember(url, got)
    return "file"


def list_dir(url: str) -> list[str]:
    """URLs of the entries of a remote folder, sorted by name."""
    fs, path = filesystem(url)
    scheme = url.split("://", 1)[0]
    names = _retrying("listing", url, lambda: fs.ls(path, detail=False))
    return sorted(n if is_url(n) else f"{scheme}://{n.lstrip('/')}" if scheme != "file" else n for n in names)


class _Counted:
    """Counts the bytes a file's read-ahead cache fetches (what crosses the network), and
    retries a failed range request."""

    def __init__(self, fetch, url: str):
        self.fetch, self.url = fetch, url

    def __call__(self, start, end):
        data = _retrying("reading", self.url, lambda: self.fetch(start, end))
        timing.count("bytes_read", len(data))
        timing.count("range_requests")
        return data


#: Blocks one request may fetch when reads run on sequentially, unless the config says
#: otherwise (``read_ahead_max_mb`` / ``read_ahead_mb``).
MAX_RUN_BLOCKS = 16
#: Blocks kept per open object (least recently used out).
KEEP_BLOCKS = 64


def _run_cache_class():
    """fsspec's cache protocol, registered once: see :class:`RunCache` below."""
    from fsspec.caching import BaseCache, caches, register_cache

    class RunCache(BaseCache):
        """Fixed blocks (``blocksize``) in an LRU, fetched in runs that grow while reads are
        sequential: a miss on the block right after the last one fetched doubles the next
        request (1, 2, 4 ... ``max_run`` blocks); any other miss (a seek) fetches one block.
        A decoder reading a GOP front to back costs few requests (each one costs CPU on
        both ends), and a sparse sampler seeking from key frame to key frame reads little
        more than the blocks it touches."""

        name = "mmstream-runs"

        def __init__(self, blocksize, fetcher, size, maxblocks: int = KEEP_BLOCKS,
                     max_run: int = MAX_RUN_BLOCKS):
            super().__init__(blocksize, fetcher, size)
            self.maxblocks, self.max_run = max(1, int(maxblocks)), max(1, int(max_run))
            self.nblocks = -(-size // blocksize) if size else 0
            self._blocks: "OrderedDict[int, bytes]" = OrderedDict()
            self._run, self._last = 1, -2

        def _block(self, k: int) -> bytes:
            got = self._blocks.get(k)
            if got is not None:
                self._blocks.move_to_end(k)
                self.hit_count += 1
                return got
            self.miss_count += 1
            self._run = min(self.max_run, self._run * 2) if k == self._last + 1 else 1
            n = min(self._run, self.nblocks - k, self.maxblocks)
            for j in range(1, n):  # stop before a block already here
                if k + j in self._blocks:
                    n = j
                    break
            bs = self.blocksize
            data = self.fetcher(k * bs, min(self.size, (k + n) * bs))
            self.total_requested_bytes += len(data)
            for j in range(n):
                self._blocks[k + j] = data[j * bs:(j + 1) * bs]
            self._last = k + n - 1
            while len(self._blocks) > self.maxblocks:
                self._blocks.popitem(last=False)
            return self._blocks.get(k, data[:bs])

        def kept_bytes(self) -> int:
            return len(self._blocks) * self.blocksize

        def rebind(self, fetcher) -> None:
            """Serve another open of the same object: its blocks stay, requests go through ``fetcher``."""
            self.fetcher, self._run, self._last = fetcher, 1, -2

        def _fetch(self, start, stop):
            start = 0 if start is None else start
            stop = self.size if stop is None else min(stop, self.size)
            if start >= stop:
                return b""
            bs = self.blocksize
            first = start // bs
            parts = [self._block(k) for k in range(first, (stop - 1) // bs + 1)]
            return b"".join(parts)[start - first * bs:stop - first * bs]

    if RunCache.name not in caches:
        register_cache(RunCache)
    return caches[RunCache.name]


#: Recent lookups (url -> (fsspec info, monotonic time)): the open that follows a lookup,
#: and the decode after the probe, need not ask the server again (a HEAD each).
_INFO: "OrderedDict[str, tuple[dict, float]]" = OrderedDict()
INFO_MEMO_S = 60.0
INFO_MEMO_ENTRIES = 1024


def _remember(url: str, info: Optional[dict]) -> None:
    if not info or info.get("size") is None:
        return
    _INFO[url] = (info, time.monotonic())
    _INFO.move_to_end(url)
    while len(_INFO) > INFO_MEMO_ENTRIES:
        _INFO.popitem(last=False)


def _recalled(url: str) -> Optional[dict]:
    got = _INFO.get(url)
    if got is None or time.monotonic() - got[1] > INFO_MEMO_S:
        return None
    return got[0]


#: The block caches of the last objects read in this process ((url, size, block size) ->
#: (cache, time)): the decode that follows a probe starts with the blocks the probe fetched.
_RECENT: "OrderedDict[tuple, tuple[Any, float]]" = OrderedDict()
RECENT_OBJECTS = 2
RECENT_BYTES = 32 << 20


@contextlib.contextmanager
def open_media(path: str) -> Iterator[Any]:
    """A readable, seekable source for ``path``: the path itself when local (or copied to
    ``cache_dir``), else an fsspec file with range requests and a bounded read-ahead."""
    if not is_url(path):
        yield local_path(path)
        return
    s = _current
    if s.cache_dir:
        yield cached_copy(path)
        return
    fs, inner = filesystem(path)
    cache = _run_cache_class()
    max_run = max(1, int(s.read_ahead_max_mb / s.read_ahead_mb + 1e-9))
    info = _recalled(path)
    f = _retrying("opening", path, lambda: fs.open(inner, "rb", block_size=int(s.read_ahead_mb * (1 << 20)),
                                                    cache_type=cache.name, cache_options={"max_run": max_run},
                                                    size=None if info is None else int(info["size"])))
    if info is not None and hasattr(type(f), "details"):
        f.details = info  # (fsspec's file would look it up again on its first read)
    timing.count("object_bytes", getattr(f, "size", 0) or 0)
    timing.count("objects_opened")
    key = (path, getattr(f, "size", None), getattr(f, "blocksize", None))
    own = isinstance(getattr(f, "cache", None), cache)
    if own:
        fetch = _Counted(f.cache.fetcher, path)
        kept = _RECENT.pop(key, None)
        if kept is not None and time.monotonic() - kept[1] <= INFO_MEMO_S:
            kept[0].rebind(fetch)  # the probe's blocks (the index, the first GOP) serve the decode
            f.cache = kept[0]
        else:
            f.cache.fetcher = fetch
    try:
        yield f
    finally:
        if own:
            _RECENT[key] = (f.cache, time.monotonic())
            while len(_RECENT) > RECENT_OBJECTS or sum(c.kept_bytes() for c, _ in _RECENT.values()) > RECENT_BYTES:
                _RECENT.popitem(last=False)
        with contextlib.suppress(Exception):
            f.close()


def read_bytes(path: str) -> bytes:
    """The whole object (small ones: annotations, sidecars, images)."""
    if not is_url(path):
        with open(local_path(path), "rb") as f:
            return f.read()
    fs, inner = filesystem(path)
    data = _retrying("reading", path, lambda: fs.cat_file(inner))
    timing.count("bytes_read", len(data))
    return data


# -- the local copy cache ------------------------------------------------------------------------

def cached_copy(url: str, conf: Optional[_Settings] = None, folder: Optional[str] = None) -> str:
    """A local copy of ``url`` in ``cache_dir`` (or ``folder``), made once and shared by the
    processes of a node; the least recently used copies go when it passes ``cache_max_gb``."""
    s = conf or _current
    root = os.path.expanduser(folder or s.cache_dir)
    os.makedirs(root, exist_ok=True)
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()
    ext = os.path.splitext(url.split("?", 1)[0])[1][:10]
    local = os.path.join(root, digest[:2], digest + ext)
    if os.path.exists(local):
        os.utime(local)  # recently used
        timing.count("cache_hits")
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fs, inner = filesystem(url, s)
    tmp = f"{local}.tmp-{os.getpid()}"
    try:
        _retrying("downloading", url, lambda: fs.get_file(inner, tmp))
        size = os.path.getsize(tmp)
        os.replace(tmp, local)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    timing.count("bytes_read", size)
    timing.count("object_bytes", size)
    if s.cache_max_gb is not None:
        _evict(root, int(s.cache_max_gb * (1 << 30)), keep=local)
    return local


def _evict(root: str, limit: int, keep: str) -> None:
    import fcntl

    with open(os.path.join(root, ".lock"), "a+") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        files = []
        for d, _, names in os.walk(root):
            for n in names:
                if n == ".lock" or ".tmp-" in n:
                    continue
                p = os.path.join(d, n)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                files.append((st.st_atime if st.st_atime > st.st_mtime else st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= limit:
                break
            if p == keep:
                continue
            with contextlib.suppress(OSError):
                os.remove(p)
                total -= size


__all__ = ["is_url", "redact", "redact_options", "join", "using", "filesystem", "kind_of", "list_dir", "open_media",
           "read_bytes", "cached_copy", "READ_ERROR"]
