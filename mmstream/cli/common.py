"""Helpers shared by subcommands: iterate a config's stream through DataLoader workers."""
from __future__ import annotations

from typing import Iterator, Optional, Union

from ..types import Drop, Sample


def identity(x):
    return x


def iterate(dataset, workers: int = 0, prefetch: int = 2) -> Iterator[Union[Sample, Drop]]:
    """Samples (and drops) of ``dataset``, decoded in ``workers`` DataLoader worker processes."""
    from torch.utils.data import DataLoader

    kwargs = {"prefetch_factor": prefetch, "persistent_workers": False} if workers > 0 else {}
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=identity, **kwargs)
    yield from loader


def add_workers_arg(parser, default: int = 0, what: str = "decode") -> None:
    parser.add_argument("--workers", type=int, default=default, metavar="N",
                        help=f"DataLoader worker processes that {what} (0: in this process; default {default})")


def worker_count(value: Optional[int]) -> int:
    return max(0, int(value or 0))
