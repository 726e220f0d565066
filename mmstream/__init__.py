"""mmstream: stream raw videos + JSON annotations into video-LLM finetuning.

    from mmstream import StreamingDataset
    ds = StreamingDataset("configs/t2vid_minicpmv.yaml")
"""
from .config import Config, load_config
from .errors import ConfigError, MmstreamError, SampleError
from .types import Clip, Drop, MediaRef, Record, Sample, Turn

__version__ = "0.1.0"


def __getattr__(name):  # keep `import mmstream` light: torch loads with the dataset
    if name == "StreamingDataset":
        from .dataset import StreamingDataset

        return StreamingDataset
    raise AttributeError(name)


__all__ = ["StreamingDataset", "Config", "load_config", "ConfigError", "MmstreamError", "SampleError",
           "Clip", "Drop", "MediaRef", "Record", "Sample", "Turn"]
