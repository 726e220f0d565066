"""The decoder interface: given a probed video and the frame positions wanted, return
exactly those frames as uint8 RGB arrays. Readers are opened inside the call (in the
process that uses them: forked DataLoader workers must never inherit one)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

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
