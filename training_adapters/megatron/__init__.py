"""megatron-energon 7.x loading of mmstream's Pai ChatML shards (see :mod:`.chatml`)."""
from .chatml import (ChatMLPack, ChatMLPackingTaskEncoder, ChatMLRawSample, ChatMLSample, ChatMLTaskEncoder,
                     cook_chatml, cook_chatml_raw, decode_jpeg, decode_raw)

__all__ = ["ChatMLSample", "ChatMLTaskEncoder", "ChatMLRawSample", "ChatMLPack", "ChatMLPackingTaskEncoder",
           "cook_chatml", "cook_chatml_raw", "decode_raw", "decode_jpeg"]
