"""The length budget: T2Vid's filters applied inline, per sample, before decoding.

    from mmstream.budget import Budget
"""
from .budget import Budget, Estimate
from .rules import (ESTIMATE_MISMATCH, FIRST_TURN_WORDS, REASONS, TOO_MANY_FRAMES, TOO_MANY_TOKENS,
                    VIDEO_TAG_COUNT, VIDEO_TAG_NOT_FIRST_TURN)

__all__ = ["Budget", "Estimate", "REASONS", "VIDEO_TAG_COUNT", "VIDEO_TAG_NOT_FIRST_TURN", "FIRST_TURN_WORDS",
           "TOO_MANY_FRAMES", "TOO_MANY_TOKENS", "ESTIMATE_MISMATCH"]
