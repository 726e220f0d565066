"""``mmstream cache``: run the stream once and write shards a finetune script reads."""
from __future__ import annotations

import argparse
import dataclasses
import json

DESCRIPTION = """\
Decode, convert and filter the configured sources once, and write the kept samples
as shards for a trainer: megatron (Pai-Megatron-Patch ChatML tar shards plus an
energon .nv-meta index), minicpmv or idefics3 (layout wds: tar shards; layout files:
JPEG frames plus one T2Vid JSON list for finetune.py --data_path).

Shards are written under a temporary name and renamed when complete, so readers
never see a partial shard. The run is resumable: killed at any moment (even kill -9)
and rerun with the same command, it keeps the completed shards and caches every
remaining sample exactly once. Several processes or machines each run one rank
(--rank/--world-size, default from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS);
the last rank to finish, or `mmstream finalize DIR`, merges their manifests.
"""

EPILOG = """\
examples:
  mmstream cache configs/t2vid.yaml --output /data/cache --workers 8
  torchrun --nproc-per-node 4 --no-python mmstream cache cfg.yaml --output /data/cache
  mmstream cache cfg.yaml --output /data/cache --rank 1 --world-size 2; mmstream finalize /data/cache
  mmstream cache cfg.yaml --output /data/cache --engine ray --address auto   # on a running Ray cluster
  mmstream cache cfg.yaml --output s3://bucket/cache --engine ray --address auto --ray-actors
"""


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="cache the stream to shards (megatron, minicpmv, idefics3)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (sources, sampling, filter, model, output)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder to write shards and manifests into")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader worker processes that decode and encode (default: the cores, at most 8; "
                        "0 decodes in this process); with --engine ray, tasks at once (default: the cluster's CPUs)")
    p.add_argument("--rank", type=int, default=None, metavar="R",
                   help="this process's rank (default: RANK, else SLURM_PROCID, else 0)")
    p.add_argument("--world-size", type=int, default=None, metavar="W",
                   help="number of ranks splitting the records (default: WORLD_SIZE, else SLURM_NTASKS, else 1)")
    p.add_argument("--format", choices=["megatron", "minicpmv", "idefics3"], default=None,
                   help="override output.format of the config")
    p.add_argument("--layout", choices=["wds", "files"], default=None, help="override output.layout of the config")
    p.add_argument("--maxcount", type=int, default=None, metavar="N",
                   help="override output.maxcount (samples per shard)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where the stages run: local DataLoader workers (default), or Ray workers that decode "
                        "groups, balanced dynamically and retried on worker loss, and write their own shards "
                        "(pip install 'mmstream[ray]')")
    p.add_argument("--ray-actors", action="store_true",
                   help="with --engine ray: an actor pool (one writer per CPU, a group per call, shards of "
                        "--maxcount samples) instead of tasks (a shard per batch of groups)")
    p.add_argument("--ray-parts", type=_at_least_one, default=None, metavar="N",
                   help="with --engine ray (tasks): a video holding a large share of the run's decode work (one "
                        "30-minute video among short ones) is decoded in up to N parts by different workers at "
                        "once, each from its own key frame, and joined before formatting (default: the cluster's "
                        "CPUs; 1: never split)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: the Ray cluster to use (default: $RAY_ADDRESS when set, else a new local Ray "
                        "instance, even where another cluster runs on this machine)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="delete what this rank wrote before and start it over (default: resume)")
    p.add_argument("--no-finalize", dest="finalize", action="store_false",
                   help="do not merge the manifests when every rank is complete (run `mmstream finalize` later)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config

    config = load_config(args.config)
    if args.engine == "ray":  # Ray starts in the background while torch and the index load
        from ..sinks.ray_engine import RaySession, warm_modules

        with RaySession(args.address, args.workers or None, actors=args.ray_actors,
                        max_parts=args.ray_parts, modules=warm_modules(config)) as session:
            return _run(args, config, session)
    return _run(args, config, None)


def _run(args, config, session) -> int:
    from ..sinks.cache import run_cache

    changes = {k: v for k, v in (("format", args.format), ("layout", args.layout), ("maxcount", args.maxcount))
               if v is not None}
    if changes:
        config = dataclasses.replace(config, output=dataclasses.replace(config.output, **changes))
    summary = run_cache(config, args.output, workers=args.workers, rank=args.rank, world_size=args.world_size,
                        resume=args.resume, progress=args.progress, finalize="auto" if args.finalize else False,
                        engine=args.engine, address=args.address, ray_session=session, ray_actors=args.ray_actors)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"
    lines = [
        f"rank {s['rank']}/{s['world_size']}: {s['kept']} sample(s) kept in {s['shards']} shard(s) "
        f"({s['format']}, {s['layout']}) in {s['output']}",
        f"  this run: {s['kept_this_run']} kept, {sum(s['dropped_this_run'].values())} dropped, "
        f"{s['shards_this_run']} shard(s), {s['elapsed_s']:.1f} s"
        + (f", {s['samples_per_s']:.2f} samples/s" if s.get("samples_per_s") else ""),
        f"  dropped in total: {s['dropped_total']} ({dropped})",
    ]
    if s.get("records_read"):
        lines.append("  records in the annotations (all ranks): "
                     + ", ".join(f"{name} {n}" for name, n in s["records_read"].items()))
    if s["resumed"]:
        lines.append(f"  resumed: {s['already_done']} record(s) were already done")
    if s.get("shards_redone"):
        lines.append(f"  redone: {s['shards_redone']} completed shard(s) no longer matched the manifest "
                     f"(deleted, their samples cached again; see the warnings)")
    lines.append(f"  manifest: {s['manifest']}" + ("" if s["finalized"] else
                                                  " (not finalized yet: other ranks pending, or --no-finalize)"))
    return "\n".join(lines)
