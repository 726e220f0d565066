"""``StreamingDataset``: the stream (:mod:`mmstream.stream`) as torch's ``IterableDataset``,
for DataLoaders (and ``EncodeSamples``, the cache's encoding in its DataLoader workers):

    ds = StreamingDataset("configs/t2vid_minicpmv.yaml")
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=4)
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import IterableDataset

from .stream import Stream


class StreamingDataset(Stream, IterableDataset):
    __doc__ = Stream.__doc__


class EncodeSamples(IterableDataset):
    """Wraps the dataset so that JPEG encoding runs in the DataLoader workers too
    (``mmstream cache``'s local engine).

    Yields :class:`~.sinks.formats.Encoded` (with ``source`` set) for samples and passes
    :class:`Drop` through; a sample the encoder rejects becomes a Drop (or, with
    ``strict``, raises).
    """

    def __init__(self, dataset: Any, output, *, strict: bool = False):
        super().__init__()
        self.dataset = dataset
        self.output = output
        self.strict = strict

    def __iter__(self):
        from .sinks.formats import encoder_for
        from .sinks.sink import encode_item

        encode = encoder_for(self.output)
        for item in self.dataset:
            yield encode_item(encode, item, strict=self.strict)


__all__ = ["StreamingDataset", "EncodeSamples"]
