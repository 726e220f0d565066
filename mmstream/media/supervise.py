"""Supervised decoding: planning and decoding run in a helper process that a hang or a
crash can be ended from outside, with a hard time limit per media item.

    runner = media_runner(sampling)          # Supervised when sampling.decode_timeout is set
    plan = runner.plan(ref, sampling)        # SampleError("decode_timeout") past the limit
    clip = runner.decode(plan, sampling)     # SampleError("decoder_crashed") if the helper dies

Why: a decoder that hangs in C (holding the GIL, so no signal handler runs) or
segfaults stalls or kills a DataLoader worker, and with it the training run.

How: each process that decodes (a DataLoader worker, or the main process with
``num_workers=0``) forks one helper on first use. A request goes over a Unix socket
pair; for a decode, the worker also passes a memfd sized for the planned clip
(``socket.send_fds``) and the helper decodes straight into it, so frames are not
copied or pickled; the worker wraps the memfd as a shared torch storage, which then
crosses to the training process as a file descriptor, as every DataLoader tensor
does. The worker waits at most ``decode_timeout`` seconds for the answer; past that it
kills the helper (SIGKILL), starts another, and drops the record as ``decode_timeout``.
A helper that dies (a segfault, the OOM killer) drops it as ``decoder_crashed``. Either
way the worker goes on with the next record. After each item the helper reports its
RSS; above ``decoder_max_rss_mb`` the worker replaces it before the next one (decoders
that leak), counted as ``decoder_recycled``.

Not covered: the worker process itself being killed from outside still stops
PyTorch's DataLoader (it raises in the training loop); a read that blocks in the
kernel uninterruptibly (D state on a dead NFS server) cannot be killed by anybody,
but it stalls only the helper, which is abandoned and replaced.
"""
from __future__ import annotations

import faulthandler
import logging
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
import time
from typing import Any, Optional

import numpy as np

from .. import timing
from ..config import SamplingConfig
from ..errors import DECODE_ERROR, DECODE_TIMEOUT, DECODER_CRASHED, SampleError
from ..types import Clip, MediaPlan, MediaRef

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")
#: Seconds a helper gets to exit by itself when it is replaced (then SIGKILL).
RETIRE_GRACE_S = 2.0


# -- the wire -----------------------------------------------------------------------------

def _send(sock: socket.socket, obj: Any, fds: tuple[int, ...] = ()) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEADER.pack(len(data))
    if fds:
        socket.send_fds(sock, [head], list(fds))
    else:
        sock.sendall(head)
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("peer closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
    head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, 4)
    if not head:
        raise EOFError("peer closed")
    if len(head) < _HEADER.size:
        head += _recv_exact(sock, _HEADER.size - len(head))
    (n,) = _HEADER.unpack(head)
    return pickle.loads(_recv_exact(sock, n)), list(fds)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- the helper -----------------------------------------------------------------------------

#: What the helper imports on its first requests (the media stage, its decoders, PIL and its
#: format plugins, pages), imported in the parent before it forks.
HELPER_MODULES = ("mmstream.media", "mmstream.media.backends.pyav", "mmstream.media.pages", "PIL.Image", "av")


def _import_before_fork() -> None:
    """Import what the helper will, here, before forking it. Another thread of this process
    (a worker's prefetching thread, or its main thread encoding JPEGs) may be importing one
    of those modules right now; a fork then copies that module's import lock held by a
    thread the child does not have, and the helper's own import of it waits forever (its
    first request times out: the demo's first image, about one run in 15). Importing here
    waits for such an import to finish instead. PIL's format plugins load on first use:
    ``Image.init()`` loads them all."""
    import importlib

    for name in HELPER_MODULES:
        importlib.import_module(name)
    from PIL import Image

    Image.init()


def _serve(sock: socket.socket) -> None:
    """The helper's loop: one request at a time until the socket closes."""
    from ..lifetime import die_with_parent
    from . import decode_media, plan_media

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    faulthandler.disable()  # a crash here is reported by the worker, as decoder_crashed
    timing.reset()
    while True:
        try:
            request, fds = _recv(sock)
        except (EOFError, OSError):
            return
        before = timing.snapshot()
        try:
            if request["op"] == "plan":
                result: Any = plan_media(request["ref"], request["sampling"])
            elif request["op"] == "decode":
                result = _decode_into(request, fds[0], decode_media)
            else:
                raise ValueError(f"unknown request {request['op']!r}")
            reply = {"ok": True, "result": result}
        except SampleError as exc:
            reply = {"ok": False, "error": (exc.reason, exc.message, exc.path)}
        except Exception as exc:  # noqa: BLE001 - any decoder failure is one record's decode_error
            reply = {"ok": False, "error": (DECODE_ERROR, f"{type(exc).__name__}: {exc}", None)}
        finally:
            for fd in fds:
                os.close(fd)
        after = timing.snapshot()
        reply["timing"] = {k: {n: v - before[k].get(n, 0.0) for n, v in after[k].items()}
                           for k in ("stages", "counts")}
        reply["rss_mb"] = _rss_mb()
        try:
            _send(sock, reply)
        except OSError:
            return


def _decode_into(request: dict, fd: int, decode_media) -> dict:
    plan: MediaPlan = request["plan"]
    shape = tuple(request["shape"])
    size = int(np.prod(shape))
    buf = mmap.mmap(fd, size)
    try:
        out = np.frombuffer(buf, dtype=np.uint8).reshape(shape)
        clip = decode_media(plan, request["sampling"], out=out)
        n = clip.num_frames
        del out, clip.frames
        return {"n": n, "indices": plan.indices, "timestamps": plan.timestamps,
                "clip_timestamps": clip.timestamps, "source_indices": clip.source_indices, "fps": clip.fps}
    finally:
        try:
            buf.close()
        except BufferError:  # a decode error's traceback still holds a view: unmapped when it is dropped
            pass  # (closing here raised, and the record's own reason became decode_error)


# -- the worker's side --------------------------------------------------------------------------

class Supervised:
    """One helper process for this process, started on first use, replaced as needed."""

    def __init__(self):
        self._pid: Optional[int] = None
        self._sock: Optional[socket.socket] = None
        self._owner = os.getpid()
        self.restarts = 0  # helpers replaced after a timeout or a crash
        self.recycled = 0  # helpers replaced because their RSS passed the limit
        self.timing_enabled = False

    # pickling (the dataset travels to DataLoader workers): never carry a helper along
    def __getstate__(self):
        return {"restarts": 0, "recycled": 0, "timing_enabled": False}

    def __setstate__(self, state):
        self.__init__()

    def _helper(self) -> socket.socket:
        if self._owner != os.getpid():  # forked: the helper belongs to the parent
            self._pid, self._sock, self._owner = None, None, os.getpid()
        if self._sock is None:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            _import_before_fork()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the helper
                try:
                    parent.close()
                    _serve(child)
                finally:
                    os._exit(0)
            child.close()
            self._pid, self._sock = pid, parent
            timing.count("decoder_helpers")
        return self._sock

    def _kill(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(block=True)
        if self._sock is not None:
            self._sock.close()
        self._pid = self._sock = None

    def _reap(self, block: bool) -> Optional[int]:
        """The helper's wait status, or None while it runs."""
        if self._pid is None:
            return None
        try:
            pid, status = os.waitpid(self._pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 0
        return status if pid else None

    def retire(self) -> None:
        """Let the helper exit (its socket closes), then make sure it did."""
        if self._sock is None or self._owner != os.getpid():
            self._pid, self._sock = None, None
            return
        self._sock.close()
        end = time.monotonic() + RETIRE_GRACE_S
        while self._reap(block=False) is None and time.monotonic() < end:
            time.sleep(0.01)
        if self._pid is not None and self._reap(block=False) is None:
            os.kill(self._pid, signal.SIGKILL)
            self._reap(block=True)
        self._pid = self._sock = None

    close = retire

    def _call(self, request: dict, timeout: float, what: str, path: Optional[str],
              max_rss_mb: Optional[float], fds: tuple[int, ...] = ()) -> Any:
        sock = self._helper()
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)  # a helper stuck in an earlier step may not read either
            _send(sock, request, fds)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply, _ = _recv(sock)
            sock.settimeout(None)
        except (socket.timeout, TimeoutError):
            self._kill()
            self.restarts += 1
            timing.count("decoder_restarts")
            raise SampleError(DECODE_TIMEOUT, f"{what} took longer than {timeout:g} s; the decoder was "
                                              f"killed and replaced", path=path) from None
        except (EOFError, ConnectionError, OSError):
            status = self._reap(block=True)
            self._pid = None
            self._kill()
            self.restarts += 1
            timing.count("decoder_restarts")
            how = _describe_exit(status)
            raise SampleError(DECODER_CRASHED, f"the decoder process died during {what} ({how}); it was "
                                               f"replaced", path=path) from None
        timing.merge(reply.get("timing", {}))
        timing.peak("decoder_rss_mb", reply.get("rss_mb", 0.0))
        if max_rss_mb is not None and reply.get("rss_mb", 0.0) > max_rss_mb:
            log.info("decoder helper RSS %.0f MB > %s MB: replacing it", reply["rss_mb"], max_rss_mb)
            self.retire()
            self.recycled += 1
            timing.count("decoder_recycled")
        if not reply["ok"]:
            reason, message, err_path = reply["error"]
            raise SampleError(reason, message, path=err_path or path)
        return reply["result"]

    def plan(self, ref: MediaRef, sampling: SamplingConfig) -> MediaPlan:
        return self._call({"op": "plan", "ref": ref, "sampling": sampling}, float(sampling.decode_timeout),
                          "opening and probing", _ref_path(ref), sampling.decoder_max_rss_mb)

    def decode(self, plan: MediaPlan, sampling: SamplingConfig) -> Clip:
        shape = (plan.num_frames, plan.height, plan.width, 3)
        nbytes = int(np.prod(shape))
        fd = os.memfd_create("mmstream-clip", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(nbytes, 1))
            res = self._call({"op": "decode", "plan": plan, "sampling": sampling, "shape": shape},
                             float(sampling.decode_timeout), "decoding", plan.path, sampling.decoder_max_rss_mb,
                             fds=(fd,))
            frames = _frames_from_fd(fd, shape, res["n"])
        finally:
            os.close(fd)
        plan.indices, plan.timestamps = res["indices"], res["timestamps"]
        return Clip(kind=plan.kind, path=plan.path, frames=frames, timestamps=res["clip_timestamps"],
                    source_indices=res["source_indices"], fps=res["fps"])


def _frames_from_fd(fd: int, shape: tuple[int, ...], n: int) -> np.ndarray:
    """The decoded frames in the memfd, as a writable array. In a DataLoader worker it is
    a shared torch storage (it crosses to the trainer as a file descriptor, no copy)."""
    from .shared import ENV, _register, dataloader_worker_info

    nbytes = int(np.prod(shape))
    if os.environ.get(ENV, "1") != "0" and dataloader_worker_info() is not None:
        import torch

        storage = torch.UntypedStorage._new_shared_fd_cpu(fd, max(nbytes, 1))
        tensor = torch.empty(0, dtype=torch.uint8).set_(storage)[:nbytes].view(shape)
        _register()
        frames = tensor.numpy()
    else:
        with mmap.mmap(fd, max(nbytes, 1)) as buf:
            frames = np.frombuffer(buf, dtype=np.uint8, count=nbytes).reshape(shape).copy()
    return frames[:n] if n < shape[0] else frames


def _ref_path(ref: MediaRef) -> Optional[str]:
    if ref.path is None:
        return None
    return os.path.normpath(os.path.join(ref.root or os.getcwd(), ref.path))


def _describe_exit(status: Optional[int]) -> str:
    if status is None:
        return "no exit status"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


class InProcess:
    """Planning and decoding in this process (``decode_timeout: null``)."""

    def plan(self, ref: MediaRef, sampling: SamplingConfig) -> MediaPlan:
        from . import plan_media

        return plan_media(ref, sampling)

    def decode(self, plan: MediaPlan, sampling: SamplingConfig) -> Clip:
        from . import decode_media

        return decode_media(plan, sampling)

    def close(self) -> None:
        pass


__all__ = ["Supervised", "InProcess"]
