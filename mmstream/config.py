"""The YAML config: one dataclass per section, unknown keys rejected at start-up.

Paths in a config file are relative to the file's folder. A source may override
``sampling`` and ``filter`` keys for itself (T2Vid samples real videos and text pages
differently); the override is merged over the top-level section.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError

SOURCE_FORMATS = ("videochatgpt", "llava", "llava_pretrain", "sharegpt", "t2vid_synthetic",
                  "t2vid_raw", "minicpmv", "auto")
STRATEGIES = ("t2vid", "uniform", "none")
DECODERS = ("auto", "pyav", "decord")


@dataclass
class ResizeConfig:
    short_side: Optional[int] = None  # scale so the short side is this many pixels
    max_pixels: Optional[int] = None  # scale down (never up) so width*height <= this


@dataclass
class PagesConfig:
    """T2Vid text pages rendered on the fly (REFERENCE section 5)."""

    font: str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian fonts-dejavu-core (make setup installs it)
    font_size: int = 20
    size: int = 448  # square page, pixels
    margin: int = 20  # left margin, pixels
    wrap_width: int = 408  # greedy word wrap width, pixels
    words_per_page: int = 115


@dataclass
class SamplingConfig:
    fps: Optional[float] = 1.0  # ffmpeg fps-filter rate; null keeps every decoded frame
    max_frames: Optional[int] = 24  # cap after fps sampling; null: no cap
    strategy: str = "t2vid"  # how to cap: t2vid | uniform | none
    decoder: str = "auto"  # auto | pyav | decord
    decoder_threads: int = 1  # per DataLoader worker (0: the cores shared among the workers); more workers use cores better
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    frame_folder_fps: Optional[float] = None  # rate of frame folders with no sidecar; null: frames are already sampled
    salvage: bool = False  # keep the decodable prefix of a damaged video (like the ffmpeg CLI)
    video_exts: list[str] = field(default_factory=lambda: ["mp4", "mkv", "webm", "avi", "mov"])
    pages: PagesConfig = field(default_factory=PagesConfig)


@dataclass
class FilterConfig:
    max_frames: Optional[int] = None  # drop samples with more frames (exactly this many pass)
    max_tokens: Optional[int] = None  # drop samples whose text + visual tokens exceed this
    one_video_in_first_turn: bool = False  # T2Vid: exactly one <video>, in the first turn
    max_first_turn_words: Optional[int] = None  # T2Vid: drop when the first user turn has >= this many words


@dataclass
class ModelConfig:
    name: str = "minicpmv-2.5"
    tokenizer: Optional[str] = None  # local directory or hub name for transformers.AutoTokenizer
    token_count: str = "t2vid"  # t2vid | chat_template
    options: dict[str, Any] = field(default_factory=dict)  # per-family knobs (max_slice_nums, ...)


@dataclass
class OutputConfig:
    format: str = "minicpmv"  # megatron | minicpmv | idefics3
    layout: str = "wds"  # wds | files
    maxcount: int = 10000  # samples per shard
    jpeg_quality: int = 95
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceConfig:
    name: str
    annotations: str
    format: str = "auto"
    media_root: Optional[str] = None
    limit: Optional[int] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # merged with the top level
    filter: FilterConfig = field(default_factory=FilterConfig)  # merged with the top level


@dataclass
class LoaderConfig:
    seed: int = 0
    shuffle: bool = True  # shuffle the decode groups (and so the records) per (seed, epoch)
    mix_buffer: int = 32  # decoded samples a worker holds to interleave groups (0: group by group)
    mix_buffer_mb: Optional[float] = 512  # ...and at most this many MB of their frames (null: no bound)
    rank: Optional[int] = None  # default: torch.distributed, then RANK env
    world_size: Optional[int] = None  # default: torch.distributed, then WORLD_SIZE env


@dataclass
class Config:
    sources: list[SourceConfig]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: Optional[ModelConfig] = None
    output: OutputConfig = field(default_factory=OutputConfig)
    strict: bool = False
    base_dir: str = "."  # folder relative paths are taken from (the config file's)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = _SUBSECTIONS.get((cls, name))
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_SUBSECTIONS = {(SamplingConfig, "resize"): ResizeConfig, (SamplingConfig, "pages"): PagesConfig}


def _merge(base: dict, override: Optional[dict]) -> dict:
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(base_dir: str, path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def load_config(source: Union[str, os.PathLike, dict, Config], **overrides: Any) -> Config:
    """Load and validate a config from a YAML path, a dict or a :class:`Config`.

    ``overrides`` replace top-level sections (e.g. ``strict=True``).
    """
    if isinstance(source, Config):
        if overrides:
            source = dataclasses.replace(source, **overrides)
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        data.setdefault("base_dir", os.path.dirname(os.path.abspath(path)))
    elif isinstance(source, dict):
        data = dict(source)
    else:
        raise ConfigError(f"config must be a path, dict or Config, not {type(source).__name__}")
    data.update(overrides)
    return _from_dict(data)


def _from_dict(data: dict) -> Config:
    data = dict(data)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown}; known: {sorted(known)}")
    base_dir = os.path.abspath(data.get("base_dir") or ".")
    sampling = _asdict(data.get("sampling"))
    filt = _asdict(data.get("filter"))
    raw_sources = data.get("sources")
    if not raw_sources or not isinstance(raw_sources, list):
        raise ConfigError("config: 'sources' must be a non-empty list")
    sources = []
    seen = set()
    for i, raw in enumerate(raw_sources):
        where = f"sources[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping")
        raw = dict(raw)
        for req in ("name", "annotations"):
            if not raw.get(req):
                raise ConfigError(f"{where}: '{req}' is required")
        name = str(raw["name"])
        if name in seen:
            raise ConfigError(f"{where}: source name {name!r} is used twice (keys must be unique)")
        if "." in name or "/" in name:
            raise ConfigError(f"{where}: source name {name!r} may not contain '.' or '/' (it prefixes sample keys)")
        seen.add(name)
        raw["sampling"] = _build(SamplingConfig, _merge(sampling, raw.get("sampling")), f"{where}.sampling")
        raw["filter"] = _build(FilterConfig, _merge(filt, raw.get("filter")), f"{where}.filter")
        src = _build(SourceConfig, raw, where)
        src.annotations = _resolve(base_dir, src.annotations)
        src.media_root = _resolve(base_dir, src.media_root) if src.media_root else os.path.dirname(src.annotations)
        if src.format not in SOURCE_FORMATS:
            raise ConfigError(f"{where}.format: {src.format!r} is not one of {SOURCE_FORMATS}")
        if src.limit is not None and (not isinstance(src.limit, int) or src.limit < 0):
            raise ConfigError(f"{where}.limit: must be a non-negative integer or null")
        _check_sampling(src.sampling, f"{where}.sampling")
        sources.append(src)
    cfg = Config(
        sources=sources,
        sampling=_build(SamplingConfig, sampling, "sampling"),
        filter=_build(FilterConfig, filt, "filter"),
        loader=_build(LoaderConfig, _loader_section(data.get("loader")), "loader"),
        model=_build(ModelConfig, data["model"], "model") if data.get("model") else None,
        output=_build(OutputConfig, data.get("output"), "output"),
        strict=bool(data.get("strict", False)),
        base_dir=base_dir,
    )
    if cfg.model is not None and cfg.model.tokenizer:
        tok = _resolve(base_dir, cfg.model.tokenizer)
        if os.path.exists(tok):  # a local folder next to the config; otherwise a hub name
            cfg.model.tokenizer = tok
    _check_sampling(cfg.sampling, "sampling")
    loader = cfg.loader
    if not isinstance(loader.mix_buffer, int) or isinstance(loader.mix_buffer, bool) or loader.mix_buffer < 0:
        raise ConfigError(f"loader.mix_buffer: must be an integer >= 0 (got {loader.mix_buffer!r})")
    if loader.mix_buffer_mb is not None and not (isinstance(loader.mix_buffer_mb, (int, float))
                                                 and loader.mix_buffer_mb > 0):
        raise ConfigError(f"loader.mix_buffer_mb: must be a number > 0 or null (got {loader.mix_buffer_mb!r})")
    return cfg


def _loader_section(section: Any) -> Any:
    if isinstance(section, dict) and "shuffle_buffer" in section:
        raise ConfigError("loader.shuffle_buffer: no longer used: records are shuffled by decode group "
                          "(loader.shuffle), and loader.mix_buffer interleaves decoded samples; remove it")
    return section


def _asdict(section: Any) -> dict:
    if section is None:
        return {}
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping, got {type(section).__name__}")
    return dict(section)


def _check_sampling(s: SamplingConfig, where: str) -> None:
    if s.fps is not None and not float(s.fps) > 0:
        raise ConfigError(f"{where}.fps: must be > 0 or null (got {s.fps})")
    if s.max_frames is not None and s.max_frames < 1:
        raise ConfigError(f"{where}.max_frames: must be >= 1 or null")
    if s.strategy not in STRATEGIES:
        raise ConfigError(f"{where}.strategy: {s.strategy!r} is not one of {STRATEGIES}")
    if not isinstance(s.decoder, str) or (s.decoder not in DECODERS and ":" not in s.decoder):
        raise ConfigError(f"{where}.decoder: {s.decoder!r} is not one of {DECODERS} (or module:Class)")
    if s.decoder_threads < 0:
        raise ConfigError(f"{where}.decoder_threads: must be >= 0 (0: the cores shared among the DataLoader workers)")
