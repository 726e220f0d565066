"""``StreamingDataset``: the stream (:mod:`mmstream.stream`) as torch's ``IterableDataset``,
for DataLoaders:

    ds = StreamingDataset("configs/t2vid_minicpmv.yaml")
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=4)
"""
from __future__ import annotations

from torch.utils.data import IterableDataset

from .stream import Stream


class StreamingDataset(Stream, IterableDataset):
    __doc__ = Stream.__doc__


__all__ = ["StreamingDataset"]
