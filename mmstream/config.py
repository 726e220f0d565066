"""The YAML config: one dataclass per section, every knob checked at start-up.

Paths in a config file are relative to the file's folder. A source may override
``sampling`` and ``filter`` keys for itself (T2Vid samples real videos and text pages
differently); the override is merged over the top-level section.

Each knob is declared with :func:`knob`, which states its default and its allowed
values (a minimum, a maximum, choices); :func:`load_config` checks the type and range
of every knob against its declaration and raises one :class:`ConfigError` naming the
key path (``sources[1].sampling.fps``). Unknown keys are errors too.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import yaml

from .errors import ConfigError

#: Default bound of one annotation record's text (a JSONL line, an array element): 16 MiB,
#: some hundred times the largest record of the supported data sets.
MAX_RECORD_BYTES = 16 << 20
#: Default bound of a record's nesting depth (records nest 3-6 deep).
MAX_DEPTH = 64

SOURCE_FORMATS = ("videochatgpt", "llava", "llava_pretrain", "sharegpt", "t2vid_synthetic",
                  "t2vid_raw", "minicpmv", "auto")
STRATEGIES = ("t2vid", "uniform", "none")
DECODERS = ("auto", "pyav", "decord", "torchcodec")
FRAME_FOLDER_MODES = ("resample", "as_extracted")
FRAME_RULES = ("ffmpeg_fps", "qwen_vl_utils", "pai_interval")


def knob(default: Any = None, *, factory: Optional[Callable[[], Any]] = None, min: Any = None, gt: Any = None,
         max: Any = None, choices: Optional[tuple] = None, check: Optional[Callable[[Any], Optional[str]]] = None):
    """A config field: its default and what values it takes. ``check(value)`` returns an
    error text or None."""
    meta = {k: v for k, v in (("min", min), ("gt", gt), ("max", max), ("choices", choices), ("check", check))
            if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _decoder_name(value: str) -> Optional[str]:
    if value in DECODERS or (":" in value and all(value.partition(":")[::2])):
        return None
    return f"is not one of {DECODERS} (or package.module:Class)"


@dataclass
class ResizeConfig:
    short_side: Optional[int] = knob(None, min=1)  # scale so the short side is this many pixels
    max_pixels: Optional[int] = knob(None, min=1)  # scale down (never up) so width*height <= this
    # decode straight to the size the model's processor resizes each frame to (Qwen2-VL/2.5-VL:
    # smart_resize with the model's pixel limits), so the processor has nothing left to resize
    to_model: bool = False


@dataclass
class PagesConfig:
    """T2Vid text pages rendered on the fly (REFERENCE section 5)."""

    font: str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian fonts-dejavu-core (make setup installs it)
    font_size: int = knob(20, min=1)
    size: int = knob(448, min=16)  # square page, pixels
    margin: int = knob(20, min=0)  # left margin, pixels
    wrap_width: int = knob(408, min=1)  # word wrap width, pixels
    words_per_page: int = knob(115, min=1)  # tokens per page (NLTK word_tokenize tokens)


@dataclass
class StorageConfig:
    """How media and annotations at URLs (``s3://``, ``http(s)://``, ``gs://``, ``hf://``) are read."""

    options: dict[str, Any] = knob(factory=dict)  # fsspec storage_options (e.g. endpoint_url); secrets never logged
    timeout_s: float = knob(30.0, gt=0)  # per request (connect, read)
    retries: int = knob(3, min=0)  # per request, with exponential backoff; then read_error
    read_ahead_mb: float = knob(0.25, gt=0)  # range-request (block) size: larger, fewer requests; smaller, fewer bytes
    read_ahead_max_mb: float = knob(4.0, gt=0)  # reads running on sequentially double each request up to this; = read_ahead_mb: fixed blocks, fewest bytes
    cache_dir: Optional[str] = None  # copy remote media here on first use (a second epoch reads locally)
    cache_max_gb: Optional[float] = knob(50.0, gt=0)  # bound of cache_dir, least recently used first


@dataclass
class SamplingConfig:
    fps: Optional[float] = knob(1.0, gt=0)  # ffmpeg fps-filter rate; null keeps every decoded frame
    max_frames: Optional[int] = knob(24, min=1)  # cap after fps sampling; null: no cap
    strategy: str = knob("t2vid", choices=STRATEGIES)  # how to cap: t2vid | uniform | none
    # ffmpeg_fps: ffmpeg's fps filter, then the cap (T2Vid); qwen_vl_utils: qwen-vl-utils'
    # smart_nframes (total / video fps x fps, clamped to [min_frames, max_frames], even) spread evenly;
    # pai_interval: every int(fps x time_interval)-th decoded frame from frame 0 at fps / that step,
    # fps the stream's average rate, uncapped (Pai-Megatron-Patch's build_llava_frame_dataset.py)
    frame_rule: str = knob("ffmpeg_fps", choices=FRAME_RULES)
    min_frames: int = knob(4, min=1)  # qwen_vl_utils rule only (its FPS_MIN_FRAMES)
    time_interval: float = knob(0.5, gt=0)  # pai_interval rule only: Pai's --time-interval (its docs: 0.5)
    decoder: str = knob("auto", check=_decoder_name)  # auto | pyav | decord | torchcodec | module:Class
    # per DataLoader worker (0: the cores shared among the workers); more workers use cores better
    decoder_threads: int = knob(1, min=0)
    resize: ResizeConfig = knob(factory=ResizeConfig)
    frame_folder_fps: Optional[float] = knob(None, gt=0)  # rate of frame folders with no sidecar; null: as they are
    # resample: a folder of known rate is sampled at `fps` like a video (one of unknown rate is taken as it is,
    # capped); as_extracted: every frame of a folder at its sidecar's rate (frame_folder_fps without one), and a
    # video with an extracted folder beside it is read from the folder (Pai-Megatron-Patch's converter)
    frame_folders: str = knob("resample", choices=FRAME_FOLDER_MODES)
    salvage: bool = False  # keep the decodable prefix of a damaged video (like the ffmpeg CLI)
    # a video, image or frame whose header declares more pixels per picture is too_large, refused before any
    # frame buffer is allocated (8K x 8K; null: no limit but FFmpeg's own, about 16K x 16K)
    max_source_pixels: Optional[int] = knob(8192 * 8192, min=1)
    # seconds one media item may take to open, probe or decode in the decode helper process;
    # past it the helper is killed and the record dropped (decode_timeout); null: decode in the worker itself
    decode_timeout: Optional[float] = knob(60.0, gt=0)
    decoder_max_rss_mb: Optional[float] = knob(None, gt=0)  # replace the helper between items above this RSS
    video_exts: list[str] = knob(factory=lambda: ["mp4", "mkv", "webm", "avi", "mov"])
    pages: PagesConfig = knob(factory=PagesConfig)
    storage: StorageConfig = knob(factory=StorageConfig)  # reading URLs (per source: sources[i].storage_options)


@dataclass
class FilterConfig:
    max_frames: Optional[int] = knob(None, min=1)  # drop samples with more frames (exactly this many pass)
    max_tokens: Optional[int] = knob(None, min=1)  # drop samples whose text + visual tokens exceed this
    one_video_in_first_turn: bool = False  # T2Vid: exactly one <video>, in the first turn
    max_first_turn_words: Optional[int] = knob(None, min=1)  # T2Vid: drop when the first user turn has >= this many
    # a sample over max_tokens: drop it (T2Vid), or keep it with the most frames / the largest
    # frames that fit, decided exactly before decoding
    over_budget: str = knob("drop", choices=("drop", "fewer_frames", "smaller_frames"))


@dataclass
class ModelConfig:
    name: str = "minicpmv-2.5"
    tokenizer: Optional[str] = None  # local directory or hub name for transformers.AutoTokenizer
    token_count: str = knob("t2vid", choices=("t2vid", "chat_template"))
    trust_remote_code: bool = False  # run a tokenizer folder's own code (auto_map), as MiniCPM-V's scripts do
    options: dict[str, Any] = knob(factory=dict)  # per-family knobs (max_slice_nums, ...), checked by the model


@dataclass
class OutputConfig:
    format: str = knob("minicpmv", choices=("megatron", "minicpmv", "idefics3"))
    layout: str = knob("wds", choices=("wds", "files"))
    maxcount: int = knob(10000, min=1)  # samples per shard
    jpeg_quality: int = knob(95, min=1, max=100)
    options: dict[str, Any] = knob(factory=dict)


@dataclass
class SourceConfig:
    name: str
    annotations: str
    format: str = knob("auto", choices=SOURCE_FORMATS)
    media_root: Optional[str] = None
    limit: Optional[int] = knob(None, min=0)
    storage_options: dict[str, Any] = knob(factory=dict)  # fsspec options for this source's URLs (endpoint_url...)
    # one record's text (a JSONL line, an array element) may be at most this long and nest at most this
    # deep; a longer or deeper one is bad_json, walked past without being held in memory
    max_record_mb: float = knob(MAX_RECORD_BYTES / (1 << 20), gt=0)
    max_json_depth: int = knob(MAX_DEPTH, min=1, max=512)
    sampling: SamplingConfig = knob(factory=SamplingConfig)  # merged with the top level
    filter: FilterConfig = knob(factory=FilterConfig)  # merged with the top level


@dataclass
class PackConfig:
    """``loader.pack``: pack samples into sequences of at most ``max_tokens`` tokens."""

    max_tokens: int = knob(8192, min=1)  # tokens per pack (a longer sample follows filter.over_budget)
    buffer: int = knob(64, min=1)  # samples collected, then packed first-fit decreasing


@dataclass
class LoaderConfig:
    seed: int = 0
    shuffle: bool = True  # shuffle the decode groups (and so the records) per (seed, epoch)
    mix_buffer: int = knob(32, min=0)  # decoded samples a worker holds to interleave groups (0: group by group)
    mix_buffer_mb: Optional[float] = knob(512, gt=0)  # ...and at most this many MB of their frames (null: no bound)
    rank: Optional[int] = knob(None, min=0)  # default: torch.distributed, then RANK env
    world_size: Optional[int] = knob(None, min=1)  # default: torch.distributed, then WORLD_SIZE env
    pack: Optional[PackConfig] = None  # null: one sample at a time; {max_tokens, buffer}: packs of samples


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


# -- checking ---------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_section(obj: Any, where: str) -> None:
    """Check every knob of a config dataclass (recursively): type, then range."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_section(value, path)
            continue
        if f.name == "sources":
            continue  # checked one by one
        tp = hints[f.name]
        if not _type_ok(value, tp):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r:.80}")
        if value is None:
            continue
        m = f.metadata
        if "choices" in m and value not in m["choices"]:
            raise ConfigError(f"{path}: {value!r} is not one of {m['choices']}")
        if "min" in m and value < m["min"]:
            raise ConfigError(f"{path}: must be >= {m['min']}" + (" or null" if _optional(tp) else "")
                              + f" (got {value!r})")
        if "gt" in m and not value > m["gt"]:
            raise ConfigError(f"{path}: must be > {m['gt']}" + (" or null" if _optional(tp) else "")
                              + f" (got {value!r})")
        if "max" in m and value > m["max"]:
            raise ConfigError(f"{path}: must be <= {m['max']} (got {value!r})")
        if "check" in m:
            problem = m["check"](value)
            if problem:
                raise ConfigError(f"{path}: {value!r} {problem}")


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)


# -- building ---------------------------------------------------------------------------

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
        if sub and value is None and (cls, name) in _NULLABLE:
            kwargs[name] = None
        else:
            kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_SUBSECTIONS = {(SamplingConfig, "resize"): ResizeConfig, (SamplingConfig, "pages"): PagesConfig,
                (SamplingConfig, "storage"): StorageConfig,
                (LoaderConfig, "pack"): PackConfig}
_NULLABLE = {(LoaderConfig, "pack")}  # subsections that may be null (off)


def _merge(base: dict, override: Optional[dict]) -> dict:
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(base_dir: str, path: Optional[str]) -> Optional[str]:
    """An absolute path, relative ones from the config's folder; URLs as they are."""
    if path is None:
        return None
    path = str(path)
    if "://" in path and not path.startswith("file://"):
        return path.rstrip("/") if path.count("/") > 3 else path
    path = os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _parent(path: str) -> str:
    if "://" in path and not path.startswith("file://"):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)


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
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping at the top, got {type(data).__name__}")
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
    sampling = _asdict(data.get("sampling"), "sampling")
    filt = _asdict(data.get("filter"), "filter")
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
            if not raw.get(req) or not isinstance(raw[req], (str, os.PathLike)):
                raise ConfigError(f"{where}.{req}: is required (a string)")
        name = str(raw["name"])
        if name in seen:
            raise ConfigError(f"{where}: source name {name!r} is used twice (keys must be unique)")
        if "." in name or "/" in name:
            raise ConfigError(f"{where}: source name {name!r} may not contain '.' or '/' (it prefixes sample keys)")
        seen.add(name)
        raw["sampling"] = _build(SamplingConfig, _merge(sampling, _asdict(raw.get("sampling"), f"{where}.sampling")),
                                 f"{where}.sampling")
        raw["filter"] = _build(FilterConfig, _merge(filt, _asdict(raw.get("filter"), f"{where}.filter")),
                               f"{where}.filter")
        src = _build(SourceConfig, raw, where)
        check_section(src, where)
        if src.storage_options:  # this source's fsspec options, over the sampling.storage ones
            src.sampling.storage.options = {**src.sampling.storage.options, **src.storage_options}
        src.annotations = _resolve(base_dir, os.fspath(src.annotations))
        src.media_root = (_resolve(base_dir, src.media_root) if src.media_root
                          else _parent(src.annotations))
        sources.append(src)
    model = data.get("model")
    cfg = Config(
        sources=sources,
        sampling=_build(SamplingConfig, sampling, "sampling"),
        filter=_build(FilterConfig, filt, "filter"),
        loader=_build(LoaderConfig, _loader_section(data.get("loader")), "loader"),
        model=_build(ModelConfig, model, "model") if model else None,
        output=_build(OutputConfig, data.get("output"), "output"),
        strict=data.get("strict", False),
        base_dir=base_dir,
    )
    check_section(cfg, "")
    if cfg.model is not None and cfg.model.tokenizer:
        tok = _resolve(base_dir, cfg.model.tokenizer)
        if os.path.exists(tok):  # a local folder next to the config; otherwise a hub name
            cfg.model.tokenizer = tok
    return cfg


def _loader_section(section: Any) -> Any:
    if isinstance(section, dict) and "shuffle_buffer" in section:
        raise ConfigError("loader.shuffle_buffer: no longer used: records are shuffled by decode group "
                          "(loader.shuffle), and loader.mix_buffer interleaves decoded samples; remove it")
    return section


def _asdict(section: Any, where: str) -> dict:
    if section is None:
        return {}
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(section).__name__}")
    return dict(section)
