"""The decoder interface: given a probed video and the frame positions wanted, return
exactly those frames as uint8 RGB arrays. Readers are opened inside the call (in the
process that uses them: forked DataLoader workers must never inherit one).

A backend implements :meth:`Backend.read`; one that can convert each frame straight
into memory it is given also overrides :meth:`Backend.read_into`, which the media stage
calls with the rows of the clip it is building (so a clip is written once, not built
from a copy of every frame)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from ..probe import VideoInfo


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def read(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
             threads: int = 1, salvage: bool = False) -> dict[int, np.ndarray]:
        """Decode the frames at ``positions`` (sorted, unique indices into ``info.pts``).

        ``size`` is the upright output (width, height). Returns {position: HxWx3 uint8}.
        Raises :class:`mmstream.errors.SampleError` when the file cannot be decoded;
        with ``salvage`` the frames decoded before the damage are returned instead.
        """

    def read_into(self, path: str, info: VideoInfo, positions: Sequence[int], size: tuple[int, int],
                  rows: Mapping[int, np.ndarray], threads: int = 1, salvage: bool = False) -> set[int]:
        """Decode the frames at ``positions`` into ``rows[position]`` (HxWx3 uint8 arrays,
        rows of the clip being built); returns the positions written (fewer only with
        ``salvage``). This default goes through :meth:`read` and copies."""
        got = self.read(path, info, positions, size, threads, salvage)
        for pos, frame in got.items():
            rows[pos][...] = frame
        return set(got)
