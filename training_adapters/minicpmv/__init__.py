"""MiniCPM-V finetuning from mmstream shards or the live stream (see :mod:`.dataset`)."""
from .dataset import (MiniCPMVShards, MiniCPMVShardStream, MiniCPMVStream, RawData, open_images, sample_to_item,
                      shard_list, shard_paths)

__all__ = ["MiniCPMVShards", "MiniCPMVShardStream", "MiniCPMVStream", "RawData", "open_images", "sample_to_item",
           "shard_list", "shard_paths"]
