"""``mmstream finalize``: merge the ranks' manifests and write the trainer metadata."""
from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Merge every rank's manifest.rank-R.json into DIR/manifest.json (config, package
versions, counts kept and dropped by reason, each shard with its sample count,
sha256 and keys) and write what the trainer reads: for megatron, the .nv-meta index
made by the installed energon's own `energon prepare` (train/val/test split from
output.options.split_ratio, default 1,0,0; train is never empty); for the files
layout, the T2Vid JSON list (output.options.json_name, default data.json).
Every rank must have finished. Running it again is harmless.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("finalize", help="merge rank manifests; write energon/JSON trainer metadata",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="the folder `mmstream cache --output` wrote")
    p.add_argument("--force", action="store_true", help="redo it even if manifest.json is up to date")
    p.add_argument("--json", action="store_true", help="print the trainer metadata summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sinks.manifest import finalize

    m = finalize(args.dir, force=args.force)
    if args.json:
        print(json.dumps({"counts": m["counts"], "trainer": m["trainer"]}, indent=1))
        return 0
    c = m["counts"]
    reasons = ", ".join(f"{k} {v}" for k, v in c["dropped"].items())
    print(f"{args.dir}: {c['kept']} sample(s) in {c['shards']} shard(s) from {m['world_size']} rank(s); "
          f"{c['dropped_total']} dropped" + (f" ({reasons})" if reasons else ""))
    t = m["trainer"]
    if t["kind"] == "energon":
        split = {k: len(v) for k, v in t["split"].items()}
        print(f"energon {t['energon_version']} index in {t['meta_dir']}/, split (shards): {split}")
    elif t["kind"] == "json":
        print(f"T2Vid JSON list: {t['path']} ({t['count']} record(s), {t['image_paths']} image paths)")
    if t.get("wids"):
        print(f"wids shard list: {t['wids']} (wids.ShardListDataset opens it)")
    return 0
