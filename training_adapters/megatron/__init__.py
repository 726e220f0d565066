"""megatron-energon 7.x loading of mmstream's Pai ChatML shards (see :mod:`.chatml`), and
Pai-Megatron-Patch's Qwen2-VL token sequence built from them (see :mod:`.pai`)."""
from .chatml import (ChatMLPack, ChatMLPackingTaskEncoder, ChatMLRawSample, ChatMLSample, ChatMLTaskEncoder,
                     cook_chatml, cook_chatml_raw, decode_jpeg, decode_raw)
from .pai import PaiChatMLTaskEncoder, PaiEncodedSample, answer_mask

__all__ = ["ChatMLSample", "ChatMLTaskEncoder", "ChatMLRawSample", "ChatMLPack", "ChatMLPackingTaskEncoder",
           "cook_chatml", "cook_chatml_raw", "decode_raw", "decode_jpeg", "PaiChatMLTaskEncoder", "PaiEncodedSample",
           "answer_mask"]
