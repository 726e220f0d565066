"""Model families: prompt format and token counts, one file per family.

    from mmstream.models import get_model
    model = get_model(config.model)     # ConfigError now, at start-up, if anything is wrong

Adding a model is adding one file here with a :class:`Model` subclass whose
``names`` lists its config names; the registry imports every module of this
package and collects them.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

from ..config import ModelConfig
from ..errors import ConfigError
from .base import MediaShape, Model, media_shapes

_REGISTRY: Optional[dict[str, type[Model]]] = None


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub] + _subclasses(sub)
    return out


def registry() -> dict[str, type[Model]]:
    """Config name -> Model class, from every module in this package."""
    global _REGISTRY
    if _REGISTRY is None:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        reg: dict[str, type[Model]] = {}
        for cls in _subclasses(Model):
            for name in cls.__dict__.get("names", ()):
                if name in reg and reg[name] is not cls:
                    raise RuntimeError(f"model name {name!r} is served by {reg[name]} and {cls}")
                reg[name] = cls
        _REGISTRY = reg
    return _REGISTRY


def model_names() -> list[str]:
    return sorted(registry())


def get_model(cfg: ModelConfig, *, load: bool = True) -> Model:
    """The model object for ``cfg``. Unknown names, bad options, a missing tokenizer
    path or (with ``load``) a tokenizer that cannot be loaded raise :class:`ConfigError`."""
    cls = registry().get(cfg.name)
    if cls is None:
        raise ConfigError(f"model.name: {cfg.name!r} is not a known model; known: {model_names()}")
    return cls(cfg, load=load)


__all__ = ["get_model", "model_names", "registry", "Model", "MediaShape", "media_shapes"]
