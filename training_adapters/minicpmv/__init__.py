"""MiniCPM-V finetuning from mmstream shards or the live stream (see :mod:`.dataset`)."""
from .dataset import MiniCPMVShards, MiniCPMVStream, RawData, index_shards, open_images, sample_to_item, shard_paths

__all__ = ["MiniCPMVShards", "MiniCPMVStream", "RawData", "index_shards", "open_images", "sample_to_item",
           "shard_paths"]
