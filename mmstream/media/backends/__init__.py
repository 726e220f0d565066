"""Decoder backends, chosen by ``sampling.decoder``: ``pyav`` | ``decord`` | ``auto``, or
``package.module:Class`` for a :class:`~.base.Backend` subclass of your own.

``auto`` picks PyAV when it imports: on this kind of machine it decodes in order
faster than decord, holds ~200 MB less and returned the right frame every time,
where decord returned wrong frames on long-GOP HEVC (REFERENCE section 8).
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Optional

from ...errors import ConfigError
from .base import Backend

AUTO_ORDER = ("pyav", "decord")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Cores granted to this process by an engine that schedules it (a Ray task's CPUs);
#: None: share the cores among DataLoader workers (see :func:`resolve_threads`).
_GRANTED_CORES: Optional[int] = None


def grant_cores(n: Optional[int]) -> None:
    """Tell the decoders of this process (and the helpers it forks later) how many cores
    its scheduler gave it, e.g. a Ray task's ``num_cpus``; None undoes it."""
    global _GRANTED_CORES
    _GRANTED_CORES = None if n is None else max(1, int(n))


def resolve_threads(requested: int) -> int:
    """Decoder threads for one video in this process. ``requested`` > 0 is taken as is;
    0 (auto) is the cores granted by :func:`grant_cores` where an engine set them, else
    shares the cores among the DataLoader workers: cores // workers, at least 1, so that
    workers x threads never oversubscribes the machine (in the main process, all cores)."""
    if requested > 0:
        return requested
    if _GRANTED_CORES is not None:
        return _GRANTED_CORES
    workers = 1
    data = sys.modules.get("torch.utils.data")  # a DataLoader worker has imported it
    if data is not None:
        info = data.get_worker_info()
        if info is not None:
            workers = info.num_workers
    return max(1, available_cores() // max(1, workers))


@lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    if name == "auto":
        for candidate in AUTO_ORDER:
            try:
                return get_backend(candidate)
            except ConfigError:
                continue
        raise ConfigError("no video decoder imports: install PyAV (av) or decord")
    if name == "pyav":
        try:
            from .pyav import PyAVBackend
        except ImportError as exc:
            raise ConfigError(f"decoder 'pyav' unavailable: {exc}") from None
        return PyAVBackend()
    if name == "decord":
        try:
            import decord  # noqa: F401
            from .decord_backend import DecordBackend
        except ImportError as exc:
            raise ConfigError(f"decoder 'decord' unavailable: {exc}") from None
        return DecordBackend()
    if name == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401  (imports torch's and FFmpeg's libraries)
            from .torchcodec_backend import TorchCodecBackend
        except (ImportError, OSError, RuntimeError) as exc:
            raise ConfigError(f"decoder 'torchcodec' unavailable ({str(exc).splitlines()[0] if str(exc) else exc}); "
                              f"pip install 'mmstream[torchcodec]' (torchcodec==0.13.0, the CPU build) and "
                              f"Debian's ffmpeg") from None
        return TorchCodecBackend()
    if ":" in name:
        return _custom(name)
    raise ConfigError(f"unknown decoder {name!r}; choose auto, pyav, decord or torchcodec (or module:Class)")


def _custom(name: str) -> Backend:
    """A backend class named ``package.module:Class`` (a subclass of :class:`Backend`)."""
    import importlib

    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"decoder {name!r}: cannot import it ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"decoder {name!r} is not a subclass of mmstream.media.backends.base.Backend")
    return cls()
