"""megatron-energon 7.x loading of mmstream's Pai ChatML shards (see :mod:`.chatml`)."""
from .chatml import ChatMLSample, ChatMLTaskEncoder, cook_chatml, decode_jpeg

__all__ = ["ChatMLSample", "ChatMLTaskEncoder", "cook_chatml", "decode_jpeg"]
