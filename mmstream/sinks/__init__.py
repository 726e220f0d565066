"""The last stage: cache the stream to shards that the finetune scripts read.

``run_cache`` drives it; ``formats`` turns a Sample into tar members or files;
``shards`` writes them atomically (tars through webdataset's ``TarWriter``);
``manifest`` records, merges (``finalize``) and checks (``verify``, and every resume)
what was written; ``tarscan`` checks a shard's member headers before anything reads
it; ``energon`` has megatron-energon index the megatron shards; ``remote`` mirrors a
cache into a bucket.
"""
from .atomic import WriteError
from ..dist import resolve_rank
from .formats import Encoded, encoder_for
from .manifest import VerifyReport, finalize, verify
from .shards import FilesWriter, ShardInfo, ShardWriter


def __getattr__(name):  # keep `import mmstream.sinks` light: torch loads with run_cache
    if name == "run_cache":
        from .cache import run_cache

        return run_cache
    raise AttributeError(name)


__all__ = ["run_cache", "resolve_rank", "finalize", "verify", "VerifyReport", "ShardWriter", "FilesWriter",
           "ShardInfo", "Encoded", "encoder_for", "WriteError"]
