"""Which rank this process is, out of how many: one rule for the dataset and the cache."""
from __future__ import annotations

import os
import sys
from typing import Optional

from .config import Config
from .errors import ConfigError


def _torch_distributed() -> tuple[Optional[int], Optional[int]]:
    dist = sys.modules.get("torch.distributed")  # initialised only where it was imported: not imported here
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None, None


def resolve_rank(rank: Optional[int] = None, world_size: Optional[int] = None,
                 config: Optional[Config] = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else ``config.loader``, else an initialised
    ``torch.distributed``, else torchrun's ``RANK``/``WORLD_SIZE``, else Slurm's
    ``SLURM_PROCID``/``SLURM_NTASKS``, else 0/1."""
    env = os.environ
    candidates = [(rank, world_size)]
    if config is not None:
        candidates.append((config.loader.rank, config.loader.world_size))
    candidates.append(_torch_distributed())
    candidates.append((env.get("RANK"), env.get("WORLD_SIZE")))
    candidates.append((env.get("SLURM_PROCID"), env.get("SLURM_NTASKS")))
    r = next((c[0] for c in candidates if c[0] is not None), 0)
    w = next((c[1] for c in candidates if c[1] is not None), 1)
    try:
        r, w = int(r), int(w)
    except (TypeError, ValueError):
        raise ConfigError(f"rank/world size must be integers (got {r!r}/{w!r})") from None
    if w < 1 or not 0 <= r < w:
        raise ConfigError(f"rank {r} is not in 0..{w - 1} (world size {w})")
    return r, w
