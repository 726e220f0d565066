"""Decoder backends for tests, named in configs as ``backends:Name`` (tests/ is on sys.path)."""
import os

from mmstream.media.backends.pyav import PyAVBackend

#: File each CountingBackend decode appends a line to (path, frame count): decodes are
#: counted, not timed, and across DataLoader worker processes.
LOG_ENV = "MMSTREAM_TEST_DECODE_LOG"


class CountingBackend(PyAVBackend):
    name = "counting"

    def read(self, path, info, positions, size, threads=1, salvage=False):
        out = super().read(path, info, positions, size, threads, salvage)
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                f.write(f"{path}\t{len(positions)}\n")
        return out


def decode_log(path):
    """The decodes the CountingBackend logged: a list of video paths."""
    try:
        with open(path) as f:
            return [line.split("\t")[0] for line in f if line.strip()]
    except FileNotFoundError:
        return []


class SlowBackend(PyAVBackend):
    """Sleeps before each decode (MMSTREAM_TEST_DECODE_SLEEP seconds, default 0.5): a long run to kill."""

    name = "slow"

    def read(self, path, info, positions, size, threads=1, salvage=False):
        import time

        time.sleep(float(os.environ.get("MMSTREAM_TEST_DECODE_SLEEP", "0.5")))
        return super().read(path, info, positions, size, threads, salvage)


class HangBackend(PyAVBackend):
    """Never returns from a decode (a Python-level hang)."""

    name = "hang"

    def read(self, path, info, positions, size, threads=1, salvage=False):
        import time

        time.sleep(3600)


class NativeHangBackend(PyAVBackend):
    """Blocks inside C while holding the GIL (libc sleep through ctypes.PyDLL): no signal
    handler, no other thread of the process runs; only a kill from outside ends it."""

    name = "native_hang"

    def read(self, path, info, positions, size, threads=1, salvage=False):
        import ctypes

        ctypes.PyDLL(None).sleep(3600)


class SegfaultBackend(PyAVBackend):
    """Dies of SIGSEGV in the middle of a decode."""

    name = "segfault"

    def read(self, path, info, positions, size, threads=1, salvage=False):
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)


class LeakyBackend(PyAVBackend):
    """Keeps 64 MB more after every decode (a leaking decoder), and logs its pid."""

    name = "leaky"
    _kept = []

    def read(self, path, info, positions, size, threads=1, salvage=False):
        import numpy as np

        LeakyBackend._kept.append(np.ones(64 << 20, np.uint8))
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                f.write(f"{path}\t{os.getpid()}\n")
        return super().read(path, info, positions, size, threads, salvage)
