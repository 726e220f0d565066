"""The same transformers class under the versions mmstream supports (>= 4.45).

transformers 5 has two image processors per family, ``XImageProcessor`` (torchvision)
and ``XImageProcessorPil``; 4.x has only ``XImageProcessor``, which is the PIL/numpy
one there. Tests that want the PIL path ask for it here.
"""
from __future__ import annotations

import importlib

import transformers

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def pil_image_processor(family: str, cls: str, **kwargs):
    """``pil_image_processor("idefics3", "Idefics3ImageProcessor", ...)``."""
    if TRANSFORMERS_MAJOR >= 5:
        module = importlib.import_module(f"transformers.models.{family}.image_processing_pil_{family}")
        return getattr(module, cls + "Pil")(**kwargs)
    return getattr(transformers, cls)(**kwargs)
