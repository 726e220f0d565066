"""Decoded clips in shared memory, so that a clip crosses from a DataLoader worker to
the training process without being copied.

    frames = frames_buffer((t, h, w, 3))    # in a DataLoader worker: backed by shared memory

A numpy array crosses a worker's result queue by pickle: copied into the pickle, through
a 64 KB pipe, and out again. For full-resolution clips that costs more than a quarter of
the decoding time on a 2-core machine (measured in ``benchmarks/``). Inside a DataLoader
worker, :func:`frames_buffer` places the clip in a shared-memory torch storage instead
(as PyTorch does for the tensors a DataLoader returns) and registers a reducer so that
such an array is sent as its storage's handle; the training process gets an ordinary
writable ``np.ndarray`` mapping the same memory. Outside a worker, or when ``/dev/shm``
lacks room (containers often mount only 64 MB), or with ``MMSTREAM_SHARED_FRAMES=0``,
the array is ordinary memory and pickles as before.

Like every tensor a DataLoader returns, each received clip holds a file descriptor
until it is freed; keeping thousands of clips alive at once needs a higher ``ulimit -n``
(or ``torch.multiprocessing.set_sharing_strategy("file_system")``).
"""
from __future__ import annotations

import mmap
import os
import sys
from math import prod

import numpy as np

#: Set to "0" to keep clips in ordinary memory (pickled through the pipe).
ENV = "MMSTREAM_SHARED_FRAMES"
#: Where POSIX shared memory lives on Linux, and how many clips' worth it must have free.
SHM_DIR = "/dev/shm"
SHM_HEADROOM = 4

_registered = False


def dataloader_worker_info():
    """torch's ``get_worker_info()`` in a DataLoader worker, else None (without importing
    torch where it is not loaded: no DataLoader runs there)."""
    data = sys.modules.get("torch.utils.data")  # a DataLoader worker has imported it
    return data.get_worker_info() if data is not None else None


def _shm_has_room(nbytes: int) -> bool:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= SHM_HEADROOM * nbytes


def _rebuild(tensor):
    return tensor.numpy()


def _reduce(array: np.ndarray):
    base = array.base
    if (type(base).__module__ == "torch" and base.is_shared() and array.flags.c_contiguous
            and base.numel() == array.size and tuple(base.shape) == array.shape):
        return _rebuild, (base,)  # pickled by torch's reducer: the storage's handle, not the bytes
    return array.__reduce__()


def _register() -> None:
    global _registered
    if not _registered:
        from multiprocessing.reduction import ForkingPickler

        ForkingPickler.register(np.ndarray, _reduce)
        _registered = True


def _shared_tensor(shape: tuple[int, ...]):
    import torch

    nbytes = prod(shape)
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is not None:  # allocated in shared memory directly, nothing copied
        return torch.empty(0, dtype=torch.uint8).set_(new_shared(nbytes)).view(shape)
    return torch.empty(shape, dtype=torch.uint8).share_memory_()


def frames_buffer(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """An uninitialised array for a clip: shared memory in a DataLoader worker when it
    can be, ordinary memory otherwise."""
    shape = tuple(int(s) for s in shape)
    if (np.dtype(dtype) == np.uint8 and os.environ.get(ENV, "1") != "0" and dataloader_worker_info() is not None
            and _shm_has_room(prod(shape))):
        try:
            tensor = _shared_tensor(shape)
        except (RuntimeError, OSError):  # no shared memory after all: ordinary memory
            return np.empty(shape, dtype)
        _register()
        return tensor.numpy()
    return _private(shape, dtype)


#: glibc's largest mmap threshold: a smaller block that was freed is reused for the next
#: clip (its pages already there), a larger one is mapped afresh every time.
REUSED_MAX_BYTES = 32 << 20

#: A private anonymous mapping, its pages made at once (Linux); elsewhere 0 (np.empty)
_PREFAULTED = getattr(mmap, "MAP_POPULATE", 0) and (mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)


def _private(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Ordinary memory for a clip. Below :data:`REUSED_MAX_BYTES`, ``np.empty``: the
    allocator hands back a freed clip's pages (an ``mmap.mmap(-1, n)`` is shmem: 9 ms to
    write a 24-frame 272p clip there, 0.5 ms here). A larger clip is fresh memory every
    time: a private mapping of 4 KB pages that the kernel makes in one call (MAP_POPULATE)
    instead of one fault per page as the frames are written. Measured in the decode
    limit's 720p runs (a 66 MB clip, allocation + conversion + writes, medians of 8
    alternating runs): 47 ms this way, 59 ms private without it, 73 ms shared (shmem),
    130-150 ms with ``np.empty``, whose huge pages (numpy asks for them) fault in slowly
    there although a loop of allocations alone writes them fastest (10 ms)."""
    nbytes = prod(shape) * np.dtype(dtype).itemsize
    if nbytes < REUSED_MAX_BYTES or not _PREFAULTED:
        return np.empty(shape, dtype)
    block = mmap.mmap(-1, nbytes, flags=_PREFAULTED)
    return np.frombuffer(block, dtype).reshape(shape)  # writable; the map lives as long as the array
