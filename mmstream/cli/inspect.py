"""``mmstream inspect``: print what the stream yields, one line per sample."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter

import numpy as np

from ..types import Drop, Sample
from .common import add_workers_arg, iterate


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="print the samples a config yields (frames, timestamps, conversation, drops)",
        description="Stream CONFIG and print one line per yielded sample: key, source, resolved media "
                    "paths, number of frames, their timestamps (seconds), frame size and the conversation; "
                    "with a model configured also the token counts and the formatted training record. "
                    "Ends with a summary of kept and dropped samples by reason.")
    p.add_argument("config", help="YAML config (see README: Config)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N kept samples")
    p.add_argument("--jsonl", action="store_true",
                   help="one JSON object per line; the last line is {\"summary\": {...}}")
    p.add_argument("--dump-frames", metavar="DIR", default=None,
                   help="also write each sample's frames as DIR/<key>/<nnnnn>.png")
    add_workers_arg(p)
    p.set_defaults(func=run)


def sample_info(sample: Sample) -> dict:
    info = {
        "key": sample.key,
        "source": sample.source,
        "media": [c.path for c in sample.clips],
        "num_frames": [c.num_frames for c in sample.clips],
        "timestamps": [[round(float(t), 6) for t in c.timestamps] for c in sample.clips],
        "width": [c.size[0] for c in sample.clips],
        "height": [c.size[1] for c in sample.clips],
        "conversation": [{"role": t.role, "content": t.content} for t in sample.record.turns],
    }
    if sample.tokens is not None:
        info["tokens"] = sample.tokens
    if sample.model_record is not None:
        info["record"] = sample.model_record
    if sample.fitted is not None:
        info["fitted"] = sample.fitted
    return info


def dump_frames(sample: Sample, root: str) -> None:
    from PIL import Image

    folder = os.path.join(root, sample.key)
    os.makedirs(folder, exist_ok=True)
    n = 0
    for clip in sample.clips:
        for frame in clip.frames:
            Image.fromarray(np.asarray(frame)).save(os.path.join(folder, f"{n:05d}.png"))
            n += 1


def run(args) -> int:
    from ..dataset import StreamingDataset

    ds = StreamingDataset(args.config, emit_drops=True)
    kept = fitted = 0
    dropped: Counter = Counter()
    out = sys.stdout
    for item in iterate(ds, args.workers):
        if isinstance(item, Drop):
            dropped[item.reason] += 1
            if not args.jsonl:
                print(f"DROP {item.key} [{item.reason}] {item.path or ''} {item.message}", file=sys.stderr)
            continue
        kept += 1
        fitted += item.fitted is not None
        info = sample_info(item)
        if args.dump_frames:
            dump_frames(item, args.dump_frames)
        if args.jsonl:
            out.write(json.dumps(info, ensure_ascii=False) + "\n")
        else:
            ts = ["[" + ", ".join(f"{t:.2f}" for t in clip) + "]" for clip in info["timestamps"]]
            tok = f" tokens={info['tokens']['total']}" if "tokens" in info else ""
            if "fitted" in info:
                tok += " fitted=" + json.dumps(info["fitted"], separators=(",", ":"))
            first = info["conversation"][0]["content"].replace("\n", "\\n")[:80] if info["conversation"] else ""
            out.write(f"{info['key']} source={info['source']} frames={info['num_frames']} "
                      f"size={list(zip(info['width'], info['height']))}{tok} t={' '.join(ts)} "
                      f"media={info['media']} first_turn={first!r}\n")
        if args.limit is not None and kept >= args.limit:
            break
    summary = {"kept": kept, "dropped": dict(sorted(dropped.items())), "read": ds.index.source_counts()}
    if fitted:
        summary["fitted"] = fitted  # kept, with fewer or smaller frames to fit max_tokens
    if args.jsonl:
        out.write(json.dumps({"summary": summary}) + "\n")
    else:
        read = ", ".join(f"{name} {n}" for name, n in summary["read"].items())
        out.write(f"summary: kept {kept}" + (f" ({fitted} fitted to max_tokens)" if fitted else "")
                  + f", dropped {sum(dropped.values())} {summary['dropped']}; "
                  f"records read per source: {read}" + (" (stopped at --limit)" if args.limit is not None
                                                         and kept >= args.limit else "") + "\n")
    return 0
