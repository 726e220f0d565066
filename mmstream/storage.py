"""Media and annotations in object storage (``s3://``, ``gs://``, ``http(s)://``, ``hf://``...),
read through fsspec with range requests, a read-ahead, timeouts and bounded retries.

    with using(sampling.storage):                 # the storage settings of a source
        with open_media(url) as f: ...            # a seekable file object (or a local cache copy)
    kind_of(url)                                  # "file" | "dir" | None, one HEAD/LIST
    redact(text)                                  # credentials out of a URL or a message

Local paths go through unchanged. A remote object is read with range requests of
``read_ahead_mb`` blocks (fsspec's block cache, the last 64 blocks kept), and an MP4's
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
    cache_dir: Optional[str] = None
    cache_max_gb: Optional[float] = 50.0


_current = _Settings()


def settings(cfg: Any) -> _Settings:
    """The settings of a :class:`~mmstream.config.StorageConfig`."""
    if cfg is None:
        return _Settings()
    return _Settings(dict(cfg.options or {}), float(cfg.timeout_s), int(cfg.retries), float(cfg.read_ahead_mb),
                     cfg.cache_dir, cfg.cache_max_gb)


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
    return "dir" if got.get("type") == "directory" else "file"


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
        return data


@contextlib.contextmanager
def open_media(path: str) -> Iterator[Any]:
    """A readable, seekable source for ``path``: the path itself when local (or copied to
    ``cache_dir``), else an fsspec file with range requests and a read-ahead."""
    if not is_url(path):
        yield local_path(path)
        return
    s = _current
    if s.cache_dir:
        yield cached_copy(path)
        return
    fs, inner = filesystem(path)
    # fixed blocks kept in an LRU (fsspec's block cache): the decoder's forward runs and its
    # seeks both reuse what was fetched, and a request is never larger than a block
    f = _retrying("opening", path, lambda: fs.open(inner, "rb", block_size=int(s.read_ahead_mb * (1 << 20)),
                                                    cache_type="blockcache", cache_options={"maxblocks": 64}))
    timing.count("object_bytes", getattr(f, "size", 0) or 0)
    timing.count("objects_opened")
    if getattr(f, "cache", None) is not None and hasattr(f.cache, "fetcher"):
        f.cache.fetcher = _Counted(f.cache.fetcher, path)
    try:
        yield f
    finally:
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
