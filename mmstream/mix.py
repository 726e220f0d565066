"""The post-decode mix buffer: a group's samples arrive together (one decode, several
records); the buffer hands them out interleaved with other groups' samples.

    mix = MixBuffer(capacity=32, max_bytes=512 << 20, seed=(0, epoch, worker))
    mix.add(group, [(position, sample_or_error), ...], nbytes)
    while mix.ready():
        position, item = mix.pop()
    mix.pending()      # positions not handed out yet (what a checkpoint must remember)
    mix.state()        # {"pops", "last"}: with the same groups added again in pending()'s
                       # order, a buffer given this state hands out what this one would have

It hands out once it holds ``capacity`` samples or ``max_bytes`` of frames (a group's
frames are counted once, however many of its samples wait), once no waiting group has
more than one sample (one record per video: nothing to interleave, so nothing is held
back), or when it is flushed;
each pop takes a random waiting sample from a group other than the previous one's
when there is one. Pop n draws from a generator seeded by (seed, n), so the choices
depend on nothing but the seed, the pop count and what is waiting. A drop (a record that failed) waits for nothing: it is handed out
first. ``capacity`` 0 hands out in arrival order (what caching uses).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

from .errors import SampleError


@dataclass
class _Group:
    gid: int
    items: list[tuple[int, Any]]  # (position, Sample), in arrival order
    nbytes: int


@dataclass
class MixStats:
    """High-water marks since the buffer was made."""

    peak_samples: int = 0
    peak_groups: int = 0
    peak_bytes: int = 0
    pops: int = 0
    same_group: int = 0  # pops from the previous pop's group (no other group was waiting)


class MixBuffer:
    def __init__(self, capacity: int, max_bytes: Optional[int], seed: Any = 0,
                 state: Optional[dict] = None):
        self.capacity = max(0, int(capacity))
        self.max_bytes = max_bytes
        self._seed = str(seed)
        self._groups: list[_Group] = []
        self._drops: list[tuple[int, SampleError]] = []
        self._samples = 0
        self._bytes = 0
        self._last: Optional[int] = None
        self._pops = 0
        if state:
            self._pops, self._last = int(state["pops"]), state["last"]
        self.stats = MixStats()

    def __len__(self) -> int:
        return self._samples + len(self._drops)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def add(self, gid: int, outcomes: list[tuple[int, Any]], nbytes: int = 0) -> None:
        """A group's outcomes: drops wait at the front, samples join the mix."""
        samples = []
        for pos, item in outcomes:
            (self._drops if isinstance(item, SampleError) else samples).append((pos, item))
        if samples:
            self._groups.append(_Group(gid, samples, int(nbytes)))
            self._samples += len(samples)
            self._bytes += int(nbytes)
        st = self.stats
        st.peak_samples = max(st.peak_samples, self._samples)
        st.peak_groups = max(st.peak_groups, len(self._groups))
        st.peak_bytes = max(st.peak_bytes, self._bytes)

    def ready(self) -> bool:
        """Something may be handed out now (more input would not change the choice much)."""
        if self._drops:
            return True
        if not self._samples:
            return False
        return (self._samples >= self.capacity or self.capacity == 0
                or (self.max_bytes is not None and self._bytes >= self.max_bytes)
                or all(len(g.items) == 1 for g in self._groups))  # nothing to interleave: no need to wait

    def pop(self) -> tuple[int, Any]:
        """Hand out one (position, item); call while :meth:`ready`, or to flush."""
        if self._drops:
            return self._drops.pop(0)
        if not self._groups:
            raise IndexError("pop from an empty mix buffer")
        if self.capacity == 0:
            g = self._groups[0]
        else:
            others = [g for g in self._groups if g.gid != self._last] or self._groups
            r = random.Random(f"{self._seed}-{self._pops}").randrange(sum(len(g.items) for g in others))
            for g in others:
                if r < len(g.items):
                    break
                r -= len(g.items)
        pos, item = g.items.pop(0)
        st = self.stats
        st.pops += 1
        if g.gid == self._last:
            st.same_group += 1
        self._last = g.gid
        self._pops += 1
        self._samples -= 1
        if not g.items:  # the group's frames are released with its last sample
            self._groups.remove(g)
            self._bytes -= g.nbytes
        return pos, item

    def pending(self) -> list[int]:
        """Positions added and not yet popped: samples group by group in buffer order, then drops."""
        return [p for g in self._groups for p, _ in g.items] + [p for p, _ in self._drops]

    def state(self) -> dict:
        return {"pops": self._pops, "last": self._last}


__all__ = ["MixBuffer", "MixStats"]
