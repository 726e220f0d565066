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
