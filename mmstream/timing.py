"""Per-process stage timer: where a worker's time goes (``mmstream bench`` turns it on).

    from mmstream import timing
    timing.enable()
    with timing.stage("decode"):
        ...
        with timing.stage("convert"):   # nested: its time is not counted in "decode"
            ...
    timing.snapshot()   # {"stages": {"decode": s, "convert": s}, "counts": {...}, "peaks": {...}}

Times are exclusive (self time): a stage nested in another is charged to itself only,
so the stages of one process add up to the time spent inside any stage. Off by
default; while off, ``stage()`` returns a shared no-op context and costs a function
call. State is per process (each DataLoader worker has its own).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

#: The stages ``mmstream bench`` reports, in pipeline order.
STAGES = ("read", "probe", "decode", "convert", "budget", "write")

_enabled = False
_totals: defaultdict = defaultdict(float)
_counts: defaultdict = defaultdict(float)
_peaks: dict = {}
_local = threading.local()  # each thread's open stages (a group decoded ahead runs in a thread)


class _Null:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _Null()


class _Stage:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        now = time.perf_counter()
        stack = _thread_stack()
        if stack:
            _totals[stack[-1]] += now - _local.last
        stack.append(self.name)
        _local.last = now
        return self

    def __exit__(self, *exc):
        now = time.perf_counter()
        _totals[_thread_stack().pop()] += now - _local.last
        _local.last = now
        return False


def _thread_stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
        _local.last = 0.0
    return stack


def stage(name: str):
    """Context manager charging the time inside it (minus nested stages) to ``name``."""
    return _Stage(name) if _enabled else _NULL


def count(name: str, value: float = 1) -> None:
    """Add ``value`` to counter ``name`` (e.g. decoded video seconds), when enabled."""
    if _enabled:
        _counts[name] += value


def merge(delta: dict) -> None:
    """Add another process's stage seconds and counters (``{"stages": ..., "counts": ...}``),
    e.g. a decode helper's, when enabled."""
    if _enabled:
        for name, value in delta.get("stages", {}).items():
            _totals[name] += value
        for name, value in delta.get("counts", {}).items():
            _counts[name] += value


def peak(name: str, value: float) -> None:
    """Keep the largest ``value`` seen for ``name`` (a high-water mark), when enabled."""
    if _enabled and value > _peaks.get(name, float("-inf")):
        _peaks[name] = value


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def reset() -> None:
    _totals.clear()
    _counts.clear()
    _peaks.clear()
    _thread_stack().clear()


def snapshot() -> dict:
    """``{"stages": {name: seconds}, "counts": {name: value}, "peaks": {name: value}}``
    of this process so far."""
    return {"stages": dict(_totals), "counts": dict(_counts), "peaks": dict(_peaks)}
