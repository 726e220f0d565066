"""Measuring the stream: what ``mmstream bench`` and the scripts in ``benchmarks/`` share.

    result = run_once("configs/x.yaml", workers=2)    # one epoch through 2 DataLoader workers
    result["samples_per_s"], result["stages_s"], result["peak_rss_mb"]

A run streams the config exactly as training would (samples, frames and all cross to
the main process). Each worker turns on :mod:`mmstream.timing` and sends, with every
item, the seconds it spent per stage and its peak RSS so far. :func:`make_result`
builds the result every benchmark prints (fields in :data:`RESULT_FIELDS`), so the
baselines compare with the stream field by field; :func:`plot_lines` draws a PNG with
Pillow alone.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from torch.utils.data import DataLoader, get_worker_info

from . import timing
from .cli.common import identity
from .config import load_config
from .dataset import StreamingDataset
from .types import Drop, Sample

#: Every result (mmstream bench and the baselines) has these fields.
RESULT_FIELDS = {
    "name": "what ran: stream, decode_only, extract_then_load, full_read",
    "config": "the config (or data set) it ran on",
    "workers": "DataLoader worker processes (0: in the main process)",
    "wall_s": "wall time of the run, from the first request to the last sample",
    "first_sample_s": "wall time until the first sample arrived",
    "samples": "kept samples",
    "dropped": "dropped records",
    "drop_reasons": "dropped records by reason",
    "frames": "frames in the kept samples",
    "video_seconds": "duration of the videos the kept samples were decoded from",
    "samples_per_s": "samples / wall_s",
    "frames_per_s": "frames / wall_s",
    "video_s_per_s": "video_seconds / wall_s: decoded video-seconds per second",
    "stages_s": "seconds per stage, summed over workers: read, probe, decode, convert, budget, write",
    "worker_busy_s": "seconds each worker spent inside the stages (their spread shows load imbalance)",
    "peak_rss_mb": "peak resident memory of each worker (VmHWM) plus that of its decode helper, MB",
    "peak_rss_mb_max": "the largest of peak_rss_mb",
    "start_rss_mb": "resident memory of each worker when it started, MB",
    "cpu_s": "CPU seconds (user + system) of this process and its workers",
    "main_cpu_s": "CPU seconds of the main (consuming) process alone",
    "bytes_written": "bytes the run wrote to disk (frames, shards)",
    "decodes": "videos (media of a decode group) decoded in the run",
    "records_per_decode": "kept records served per decode (records sharing a video share its decode)",
    "mix_peak_mb": "peak frames held in each worker's mix buffer, MB",
    "bytes_read": "bytes fetched from object storage (range requests; 0 for local media)",
}

MB = 1 << 20


# -- measurements inside a worker ------------------------------------------------------
def proc_status_mb(field_name: str) -> float:
    """A ``/proc/self/status`` memory line (VmHWM, VmRSS) in MB; ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return proc_status_mb("VmHWM")


def main_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have been waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Measured:
    """What a bench worker yields: the item (a Sample, a Drop, or an encoded sample)
    plus the stage times and counters spent on it, and the worker's memory so far."""

    item: Any
    worker: int
    frames: int = 0
    stages: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    peaks: dict = field(default_factory=dict)  # the worker's high-water marks so far (mix buffer)


def _delta(now: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in now.items() if v != before.get(k, 0.0)}


class BenchDataset(StreamingDataset):
    """StreamingDataset that reports stage times, counters and memory per item (as :class:`Measured`)."""

    encoder = None  # set for --write: encode in the worker, as ``mmstream cache`` does

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        timing.enable()
        timing.reset()
        start = proc_status_mb("VmRSS")
        last = timing.snapshot()
        try:
            for item in super().__iter__():
                frames = item.num_frames if isinstance(item, Sample) else 0
                if self.encoder is not None and isinstance(item, Sample):
                    with timing.stage("write"):
                        item = self.encoder(item)
                snap = timing.snapshot()
                yield Measured(item, worker, frames, _delta(snap["stages"], last["stages"]),
                               _delta(snap["counts"], last["counts"]), peak_rss_mb(), start, snap["peaks"])
                last = snap
        finally:
            timing.enable(False)


# -- one run ---------------------------------------------------------------------------
def load_bench_config(path, decoder: Optional[str] = None, threads: Optional[int] = None,
                      decode_timeout: Optional[str] = None):
    """The config, with ``sampling.decoder`` / ``decoder_threads`` / ``decode_timeout``
    (a number of seconds, or ``"none"``) overridden everywhere."""
    cfg = load_config(path)
    for sampling in [cfg.sampling] + [s.sampling for s in cfg.sources]:
        if decoder:
            sampling.decoder = decoder
        if threads is not None:
            sampling.decoder_threads = threads
        if decode_timeout is not None:
            sampling.decode_timeout = None if str(decode_timeout).lower() in ("none", "null", "off") \
                else float(decode_timeout)
    return cfg


def run_once(config, workers: int = 0, *, samples: Optional[int] = None, seconds: Optional[float] = None,
             write_dir: Optional[str] = None, decoder: Optional[str] = None,
             threads: Optional[int] = None, decode_timeout: Optional[str] = None, prefetch: int = 2) -> dict:
    """Stream ``config`` once through ``workers`` DataLoader workers; return a result dict."""
    cfg = load_bench_config(config, decoder, threads, decode_timeout)
    ds = BenchDataset(cfg, emit_drops=True)
    writer = None
    if write_dir:
        from .sinks import FilesWriter, ShardWriter, encoder_for

        ds.encoder = encoder_for(cfg.output)
        os.makedirs(write_dir, exist_ok=True)
        if cfg.output.layout == "files":  # frames as files, records in parts/*.json
            writer = FilesWriter(write_dir, lambda i: f"parts/bench-{i:06d}.json", maxcount=cfg.output.maxcount)
        else:
            writer = ShardWriter(write_dir, lambda i: f"bench-{i:06d}.tar", maxcount=cfg.output.maxcount)
    kwargs = {"prefetch_factor": prefetch} if workers > 0 else {}
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=identity, **kwargs)

    kept = frames = 0
    drops: Counter = Counter()
    stages: Counter = Counter()
    counts: Counter = Counter()
    peaks: dict[int, float] = {}
    starts: dict[int, float] = {}
    busy: Counter = Counter()
    mix_peaks: dict[int, float] = {}
    helper_peaks: dict[int, float] = {}
    first = None
    cpu0, main0 = cpu_seconds(), main_cpu_seconds()
    t0 = time.perf_counter()
    it = iter(loader)
    try:
        for m in it:
            now = time.perf_counter()
            if first is None:
                first = now - t0
            stages.update(m.stages)
            counts.update(m.counts)
            mix_peaks[m.worker] = max(mix_peaks.get(m.worker, 0.0), m.peaks.get("mix_peak_bytes", 0.0))
            helper_peaks[m.worker] = max(helper_peaks.get(m.worker, 0.0), m.peaks.get("decoder_rss_mb", 0.0))
            busy[m.worker] += sum(m.stages.values())
            # a worker's memory includes its decode helper's (an upper bound: the peaks may not coincide)
            peaks[m.worker] = max(peaks.get(m.worker, 0.0), m.peak_rss_mb + m.peaks.get("decoder_rss_mb", 0.0))
            starts.setdefault(m.worker, m.start_rss_mb)
            if isinstance(m.item, Drop):
                drops[m.item.reason] += 1
            else:
                kept += 1
                frames += m.frames
                if writer is not None:
                    w = time.perf_counter()
                    writer.write(m.item)
                    stages["write"] += time.perf_counter() - w
            if samples is not None and kept >= samples:
                break
            if seconds is not None and now - t0 >= seconds:
                break
        if writer is not None:
            w = time.perf_counter()
            writer.close()
            stages["write"] += time.perf_counter() - w
        wall = time.perf_counter() - t0
        main_cpu = main_cpu_seconds() - main0
    finally:
        del it  # shuts the workers down (and reaps them, so their CPU time is counted)
    cpu = cpu_seconds() - cpu0
    written = 0
    if write_dir:
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(write_dir) for f in files)
    return make_result("stream", str(config), workers, wall=wall, first=first, samples=kept, drops=drops,
                       frames=frames, video_seconds=counts.get("video_seconds", 0.0), stages=stages,
                       peaks=[peaks[k] for k in sorted(peaks)], starts=[starts[k] for k in sorted(starts)],
                       busy=[busy[k] for k in sorted(busy)], cpu=cpu, main_cpu=main_cpu, bytes_written=written,
                       decodes=counts.get("decodes", 0), decoded_records=counts.get("decoded_records", 0),
                       mix_peak_mb=[mix_peaks[k] / MB for k in sorted(mix_peaks)],
                       extra={"decoder": _decoders(cfg), "decoder_threads": cfg.sampling.decoder_threads,
                              "decode_timeout": cfg.sources[0].sampling.decode_timeout,
                              "decoder_helpers": int(counts.get("decoder_helpers", 0)),
                              "decoder_restarts": int(counts.get("decoder_restarts", 0)),
                              "decoder_peak_rss_mb": [round(helper_peaks[k], 1) for k in sorted(helper_peaks)],
                              "bytes_read": int(counts.get("bytes_read", 0)),
                              "bytes_read_per_sample": round(counts.get("bytes_read", 0) / max(kept, 1)),
                              "mix_buffer": cfg.loader.mix_buffer, "mix_buffer_mb": cfg.loader.mix_buffer_mb})


def _decoders(cfg) -> str:
    from .media.backends import get_backend

    names = sorted({s.sampling.decoder for s in cfg.sources})
    return ",".join(f"auto({get_backend('auto').name})" if n == "auto" else n for n in names)


def make_result(name: str, config: str, workers: int, *, wall: float, samples: int, frames: int,
                video_seconds: float, first: Optional[float] = None, drops: Optional[dict] = None,
                stages: Optional[dict] = None, peaks: Sequence[float] = (), starts: Sequence[float] = (),
                busy: Sequence[float] = (), cpu: Optional[float] = None, main_cpu: Optional[float] = None,
                bytes_written: int = 0, decodes: Optional[float] = None, decoded_records: Optional[float] = None,
                mix_peak_mb: Sequence[float] = (), extra: Optional[dict] = None) -> dict:
    """A result with every field of :data:`RESULT_FIELDS` (the baselines build theirs here too)."""
    wall = max(wall, 1e-9)
    drops = dict(sorted((drops or {}).items()))
    out = {
        "name": name,
        "config": config,
        "workers": workers,
        "wall_s": round(wall, 4),
        "first_sample_s": None if first is None else round(first, 4),
        "samples": samples,
        "dropped": sum(drops.values()),
        "drop_reasons": drops,
        "frames": frames,
        "video_seconds": round(video_seconds, 3),
        "samples_per_s": round(samples / wall, 4),
        "frames_per_s": round(frames / wall, 3),
        "video_s_per_s": round(video_seconds / wall, 3),
        "stages_s": {s: round(float((stages or {}).get(s, 0.0)), 4) for s in timing.STAGES},
        "worker_busy_s": [round(b, 3) for b in busy],
        "peak_rss_mb": [round(p, 1) for p in peaks],
        "peak_rss_mb_max": round(max(peaks), 1) if peaks else None,
        "start_rss_mb": [round(p, 1) for p in starts],
        "cpu_s": None if cpu is None else round(cpu, 3),
        "main_cpu_s": None if main_cpu is None else round(main_cpu, 3),
        "bytes_written": int(bytes_written),
        "decodes": None if decodes is None else int(decodes),
        "records_per_decode": round(decoded_records / decodes, 3) if decodes else None,
        "mix_peak_mb": [round(p, 1) for p in mix_peak_mb],
        "bytes_read": 0,
    }
    out.update(extra or {})
    return out


# -- repeats, medians, machine ---------------------------------------------------------
def median_result(runs: Sequence[dict]) -> dict:
    """Field-wise median of repeated results (lists element-wise), with each run's headline numbers."""
    if len(runs) == 1:
        return dict(runs[0], repeat=1)
    out = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            med = statistics.median(values)
            out[key] = round(med, 4) if isinstance(med, float) else med
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            keys = list(value) + sorted(set().union(*values) - set(value))
            out[key] = {k: round(statistics.median(v.get(k, 0) for v in values), 4) for k in keys}
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            n = max(len(v) for v in values)
            out[key] = [statistics.median(v[i] for v in values if i < len(v)) for i in range(n)]
    out["repeat"] = len(runs)
    out["runs"] = [{k: r.get(k) for k in ("wall_s", "samples_per_s", "peak_rss_mb_max", "cpu_s", "other_cpu_share")
                    if k in r} for r in runs]
    return out


def machine_info() -> dict:
    """Where a result was measured: CPU, cores, memory, versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {"python": platform.python_version()}
    for mod in ("av", "decord", "torch", "numpy", "PIL"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": mem, "os": platform.platform(), "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# -- plot (Pillow only) ----------------------------------------------------------------
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _font(size: int):
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _nice_ticks(top: float, n: int = 5) -> list[float]:
    import math

    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def plot_lines(path: str, series: dict[str, Sequence[tuple[float, float]]], *, title: str,
               xlabel: str = "DataLoader workers", ylabel: str = "samples / s",
               hlines: Optional[dict[str, float]] = None, size: tuple[int, int] = (900, 560)) -> str:
    """Draw ``{label: [(x, y), ...]}`` as lines with markers (and labelled horizontal
    lines) into a PNG with Pillow."""
    from PIL import Image, ImageDraw

    hlines = hlines or {}
    W, H = size
    left, right, top, bottom = 90, 230, 60, 70
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    f_title, f_axis, f_tick = _font(20), _font(15), _font(13)
    xs = sorted({x for pts in series.values() for x, _ in pts}) or [0, 1]
    ymax = max([y for pts in series.values() for _, y in pts] + list(hlines.values()) + [1e-9]) * 1.1
    yticks = _nice_ticks(ymax)
    ymax = yticks[-1]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    pw, ph = W - left - right, H - top - bottom

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * pw, top + ph - y / ymax * ph

    d.text((left, 18), title, fill="black", font=f_title)
    for y in yticks:
        _, yy = px(x0, y)
        d.line([(left, yy), (left + pw, yy)], fill=(225, 225, 225))
        d.text((left - 8, yy), f"{y:g}", fill="black", font=f_tick, anchor="rm")
    for x in xs:
        xx, _ = px(x, 0)
        d.line([(xx, top + ph), (xx, top + ph + 5)], fill="black")
        d.text((xx, top + ph + 8), f"{x:g}", fill="black", font=f_tick, anchor="mt")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    d.text((left + pw / 2, H - 25), xlabel, fill="black", font=f_axis, anchor="mm")
    label_img = Image.new("RGB", (ph, 24), "white")
    ImageDraw.Draw(label_img).text((ph / 2, 12), ylabel, fill="black", font=f_axis, anchor="mm")
    img.paste(label_img.rotate(90, expand=True), (12, top))
    legend_y = top
    for i, (label, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(pts)
        coords = [px(x, y) for x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=color, width=3)
        for cx, cy in coords:
            d.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=color)
        d.line([(left + pw + 15, legend_y + 8), (left + pw + 40, legend_y + 8)], fill=color, width=3)
        d.text((left + pw + 46, legend_y), label, fill="black", font=f_tick)
        legend_y += 22
    for i, (label, value) in enumerate(hlines.items()):
        color = PALETTE[(len(series) + i) % len(PALETTE)]
        _, yy = px(x0, value)
        for xa in range(left, left + pw, 12):
            d.line([(xa, yy), (min(xa + 6, left + pw), yy)], fill=color, width=2)
        d.line([(left + pw + 15, legend_y + 8), (left + pw + 40, legend_y + 8)], fill=color, width=2)
        d.text((left + pw + 46, legend_y), label, fill="black", font=f_tick)
        legend_y += 22
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
