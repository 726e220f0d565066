"""Processes the stream starts end when the process that started them dies.

    die_with_parent()     # first thing in a DataLoader worker or a decode helper

Why this is needed: a DataLoader worker notices a dead parent only between items (its
watchdog checks the parent's pid when it waits for the next index), and when it then
exits, Python joins its result queue's feeder thread, which is blocked writing the
items nobody will read into a full pipe (every worker holds the pipe's read end, so the
write never fails). Killed runs (``kill -9``, the OOM killer, a cancelled Slurm step)
left such workers behind, blocked in that join forever. ``PR_SET_PDEATHSIG`` has the
kernel send the worker SIGKILL the moment its parent dies, whatever it is doing
(decoding, handing over a clip, writing). Linux only; elsewhere a no-op.

The signal follows the *thread* that forked the worker: iterate a DataLoader from the
thread that will keep it (the main thread, as training loops do).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies. Returns
    whether it is armed; if the parent is already gone, exits at once."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    return True


__all__ = ["die_with_parent"]
