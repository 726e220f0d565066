"""``mmstream bench``: how fast a config streams, and where the time goes.

    mmstream bench CONFIG --workers 2 --json
    mmstream bench CONFIG --workers 1,2 --repeat 3 --plot throughput.png

Reports samples/s, sampled frames/s, decoded video-seconds per second, seconds per
stage (summed over workers), peak RSS per worker and kept/dropped counts; the
measuring lives in :mod:`mmstream.benchmark`, which ``benchmarks/`` shares.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

MB = 1 << 20


def parse_workers(text: str) -> list[int]:
    """``"2"`` -> [2]; ``"1,2,4"`` -> [1, 2, 4]."""
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"mmstream bench: --workers takes N or a list N1,N2,... (got {text!r})") from None
    if not out or min(out) < 0:
        raise SystemExit("mmstream bench: --workers must be >= 0")
    return out


# -- the command -----------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure a config's throughput, stage times and memory",
        description="Stream CONFIG through DataLoader workers as training would and report samples/s, "
                    "sampled frames/s, decoded video-seconds per second, seconds per stage (read "
                    "annotations, probe, decode, convert, budget, write; summed over workers), peak RSS "
                    "per worker and kept/dropped counts. Default: one full epoch.")
    p.add_argument("config", help="YAML config")
    p.add_argument("--workers", default="2", metavar="N[,N...]",
                   help="DataLoader worker processes; a list (1,2) runs each (default 2)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--samples", type=int, default=None, metavar="N", help="stop after N kept samples")
    stop.add_argument("--seconds", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--repeat", type=int, default=1, metavar="K", help="run K times, report medians (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw samples/s against worker count (with one --workers N: 1..N)")
    p.add_argument("--decoder", choices=("auto", "pyav", "decord", "torchcodec"), default=None,
                   help="override sampling.decoder for every source")
    p.add_argument("--decode-timeout", default=None, metavar="S|none",
                   help="override sampling.decode_timeout (none: decode in the worker itself, unsupervised)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="override sampling.decoder_threads (decoder threads per worker; 0: the cores shared among the workers)")
    p.add_argument("--write", metavar="DIR", default=None,
                   help="also encode (in the workers) and write tar shards to DIR, timed as 'write'")
    p.set_defaults(func=run)


def format_result(r: dict) -> str:
    st = r["stages_s"]
    total = sum(st.values()) or 1.0
    lines = [
        f"{r['name']} {r['config']}  workers={r['workers']}  decoder={r.get('decoder', '?')}"
        + (f"  (median of {r['repeat']})" if r.get("repeat", 1) > 1 else ""),
        f"  {r['samples']} samples ({r['dropped']} dropped {r['drop_reasons']}), {r['frames']} frames, "
        f"{r['video_seconds']:.0f} s of video in {r['wall_s']:.2f} s (first sample after {r['first_sample_s']} s)",
        f"  {r['samples_per_s']:.3f} samples/s   {r['frames_per_s']:.1f} frames/s   "
        f"{r['video_s_per_s']:.1f} video-s/s   cpu {r['cpu_s']} s (main process {r['main_cpu_s']} s)",
        "  stages (s, summed over workers): " + "  ".join(
            f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in st.items()),
        f"  busy per worker (s): {r['worker_busy_s']}   peak RSS per worker (MB): {r['peak_rss_mb']} "
        f"(started at {r['start_rss_mb']})",
    ]
    if r.get("decoder_helpers"):
        lines.append(f"  supervised decoding (decode_timeout {r.get('decode_timeout')} s): {r['decoder_helpers']} "
                     f"helper(s), {r.get('decoder_restarts', 0)} restart(s), decoder helper peak RSS "
                     f"{r.get('decoder_peak_rss_mb')} MB")
    if r.get("decodes") is not None:
        lines.append(f"  {r['decodes']} decode(s), {r['records_per_decode']} record(s) per decode; "
                     f"mix buffer peak per worker (MB): {r.get('mix_peak_mb')} "
                     f"(mix_buffer {r.get('mix_buffer')}, mix_buffer_mb {r.get('mix_buffer_mb')})")
    if r.get("bytes_read"):
        lines.append(f"  read {r['bytes_read'] / MB:.1f} MB from object storage "
                     f"({r['bytes_read_per_sample'] / MB:.2f} MB per sample)")
    if r["bytes_written"]:
        lines.append(f"  wrote {r['bytes_written'] / MB:.1f} MB")
    return "\n".join(lines)


def run(args) -> int:
    from ..benchmark import machine_info, median_result, plot_lines, run_once

    counts = parse_workers(args.workers)
    if args.plot and len(counts) == 1:
        counts = list(range(1, max(counts[0], 1) + 1))
    results = []
    for n in counts:
        runs = []
        for _ in range(max(1, args.repeat)):
            runs.append(run_once(args.config, n, samples=args.samples, seconds=args.seconds,
                                 write_dir=args.write, decoder=args.decoder, threads=args.threads,
                                 decode_timeout=args.decode_timeout))
        results.append(median_result(runs))
        if not args.json:
            print(format_result(results[-1]), flush=True)
    if args.plot:
        plot_lines(args.plot, {"mmstream stream": [(r["workers"], r["samples_per_s"]) for r in results]},
                   title=f"mmstream bench: {os.path.basename(args.config)}")
        if not args.json:
            print(f"plot: {args.plot}")
    if args.json:
        payload: Any = results[0] if len(results) == 1 else {"results": results}
        if isinstance(payload, dict):
            payload = dict(payload, machine=machine_info())
        json.dump(payload, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0
