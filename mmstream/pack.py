"""Packing samples into sequences of at most ``max_tokens`` tokens, from their exact token
counts (known before decoding).

    packs = first_fit([700, 300, 512, 90], max_tokens=1024)   # [[0, 1], [2, 3]] (indices)
    packer = Packer(max_tokens=8192, buffer=64)
    packer.add(position, sample)
    while packer.ready: pack = packer.pop()                 # Pack: samples, offsets, total

:func:`first_fit` is first-fit decreasing: the longest first, each into the first pack it
fits. The stream (``loader.pack``) and the megatron adapter's energon packing hooks
(``training_adapters/megatron``) both pack with it. The stream's :class:`Packer` collects
``buffer`` samples, packs them and hands out every pack; what waits in it is part of the
dataset's state, so a resumed epoch packs exactly as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


def first_fit(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into packs whose sums are at most ``max_tokens``
    (first-fit decreasing; ties keep the input order). An item longer than
    ``max_tokens`` is a pack of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    packs: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        n = lengths[i]
        for b, load in enumerate(loads):
            if load + n <= max_tokens:
                packs[b].append(i)
                loads[b] += n
                break
        else:
            packs.append([i])
            loads.append(n)
    for p in packs:
        p.sort()  # each pack in arrival order
    return packs


@dataclass
class Pack:
    """Samples packed into one sequence: sample i's tokens are at
    ``[offsets[i], offsets[i] + lengths[i])``; ``total <= max_tokens``."""

    samples: list[Any]
    lengths: list[int]
    offsets: list[int]
    total: int
    max_tokens: int
    positions: list[int] = field(default_factory=list, repr=False)  # stream positions of the samples

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.samples)


def make_pack(items: list[tuple[int, Any]], max_tokens: int) -> Pack:
    lengths = [int(s.tokens["total"]) for _, s in items]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    return Pack([s for _, s in items], lengths, offsets, sum(lengths), max_tokens, [p for p, _ in items])


class Packer:
    """Collect ``buffer`` samples, pack them with :func:`first_fit`, hand out the packs one
    by one (:meth:`pop`). Both the samples waiting and the packs made but not handed out
    are in :meth:`state`."""

    def __init__(self, max_tokens: int, buffer: int):
        self.max_tokens = int(max_tokens)
        self.buffer = max(1, int(buffer))
        self.items: list[tuple[int, Any]] = []  # (position, sample) waiting
        self.ready: list[list[tuple[int, Any]]] = []  # packs made, not handed out

    def add(self, position: int, sample: Any) -> None:
        self.items.append((position, sample))
        if len(self.items) >= self.buffer:
            self.flush()

    def flush(self) -> None:
        items, self.items = self.items, []
        for g in first_fit([int(s.tokens["total"]) for _, s in items], self.max_tokens):
            self.ready.append([items[i] for i in g])

    def pop(self) -> Pack:
        return make_pack(self.ready.pop(0), self.max_tokens)

    def state(self) -> dict:
        return {"ready": [[p for p, _ in pack] for pack in self.ready], "items": [p for p, _ in self.items]}

    def positions(self) -> list[int]:
        return [p for pack in self.ready for p, _ in pack] + [p for p, _ in self.items]

    def restore(self, state: dict, samples: dict[int, Any]) -> None:
        """Refill from :meth:`state` with the samples decoded again (a position whose sample
        is missing now is left out)."""
        self.ready = [[(p, samples[p]) for p in pack if p in samples] for pack in state.get("ready", [])]
        self.ready = [pack for pack in self.ready if pack]
        self.items = [(p, samples[p]) for p in state.get("items", []) if p in samples]


__all__ = ["first_fit", "Pack", "Packer", "make_pack"]
