"""The ``.nv-meta`` folder of a megatron shard folder, written by megatron-energon itself.

mmstream never writes energon's index files: it runs the installed energon's own
``energon prepare`` command, so ``.info.json``, ``index.sqlite``, ``index.uuid``,
``split.yaml`` and ``dataset.yaml`` always match the energon that will read them::

    prepare(out, ["pretrain-000000.tar", "pretrain-000001.tar"], split_ratio=(8, 1, 1))

It is the equivalent of::

    energon prepare OUT --non-interactive --no-progress --sample-type CrudeWebdataset \\
        --force-overwrite --exclude '<anything not in the manifest>' \\
        --split-parts 'train:^(?:pretrain-000000[.]tar)$' --split-parts 'val:...' ...

The split is by whole shards and chosen here (:func:`split_shards`), not by energon's
``--split-ratio``, which rounds every part down and so leaves the train split empty
when there are fewer shards than parts (REFERENCE 6, an upstream defect).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any, Iterable, Sequence, Union

from ..errors import ConfigError, MmstreamError

META_DIR = ".nv-meta"
SPLITS = ("train", "val", "test")
#: Train/val/test ratio when ``output.options.split_ratio`` is not set: every shard
#: trains (what Pai-Megatron-Patch's README runs: ``--split-ratio 1,0,0``).
DEFAULT_SPLIT_RATIO = (1.0, 0.0, 0.0)
#: Sample type named in ``dataset.yaml``: the crude dict, cooked by
#: ``training_adapters.megatron`` (Pai's own class does not load on energon 7.x).
SAMPLE_TYPE = "CrudeWebdataset"
#: At most this many processes index shards.
MAX_INDEX_WORKERS = 16

# energon's CLI is started in a child process with its arguments on stdin: a split
# list of many thousand shard names would not fit one command-line argument.
_RUN_CLI = (
    "import json, sys\n"
    "from megatron.energon.cli.main import main\n"
    "main(args=json.load(sys.stdin), prog_name='energon', standalone_mode=True)\n"
)


def parse_split_ratio(value: Union[None, str, Sequence[Any]]) -> tuple[float, float, float]:
    """``"8,1,1"``, ``[0.8, 0.1, 0.1]`` or ``None`` (the default) -> three floats."""
    if value is None:
        return DEFAULT_SPLIT_RATIO
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        ratio = tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"output.options.split_ratio: {value!r} is not three numbers like 8,1,1") from None
    if len(ratio) != 3 or any(not math.isfinite(r) or r < 0 for r in ratio) or ratio[0] <= 0:
        raise ConfigError(f"output.options.split_ratio: {value!r} must be three non-negative numbers "
                          f"(train, val, test) with train > 0")
    return ratio  # type: ignore[return-value]


def split_shards(names: Iterable[str], ratio: Sequence[float] = DEFAULT_SPLIT_RATIO) -> dict[str, list[str]]:
    """Assign whole shards to train/val/test.

    val and test get ``floor(n * share)`` shards each, taken from the end of the sorted
    list; train gets the rest, and at least one shard whenever there is one (val/test
    give theirs back, test first). Deterministic: the same names give the same split.

    >>> split_shards(["a.tar"], (8, 1, 1))
    {'train': ['a.tar'], 'val': [], 'test': []}
    >>> split_shards([f"{i}.tar" for i in range(10)], (8, 1, 1))["val"]
    ['8.tar']
    """
    names = sorted(names)
    n = len(names)
    total = float(sum(ratio))
    n_val = int(math.floor(n * ratio[1] / total + 1e-9))
    n_test = int(math.floor(n * ratio[2] / total + 1e-9))
    while n > 0 and n - n_val - n_test < 1:
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    n_train = n - n_val - n_test
    return {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}


def _exact(names: Sequence[str]) -> str:
    """A regex matching exactly these relative paths (``^$`` for none).

    energon brace-expands patterns, which eats backslashes: a literal dot is ``[.]``.
    """
    if not names:
        return "^$"
    for name in names:
        if not all(c.isalnum() or c in "-_./" for c in name):
            raise MmstreamError(f"shard name {name!r} has characters energon split patterns cannot hold")
    return "^(?:" + "|".join(n.replace(".", "[.]") for n in names) + ")$"


def prepare_args(directory: str, shards: Sequence[str], split: dict[str, list[str]],
                 *, num_workers: int) -> list[str]:
    """The ``energon`` command-line arguments (without the program name)."""
    args = [
        "prepare", directory,
        "--non-interactive", "--no-progress", "--force-overwrite",
        "--sample-type", SAMPLE_TYPE,
        "--num-workers", str(num_workers),
        # index nothing but the manifest's shards (a stray tar would be indexed and could
        # repeat keys)
        "--exclude", "^(?!" + _exact(list(shards))[1:] + ")",
    ]
    for part in SPLITS:
        args += ["--split-parts", f"{part}:{_exact(split.get(part, []))}"]
    return args


def prepare(directory: str, shards: Sequence[str], *, split_ratio: Sequence[float] = DEFAULT_SPLIT_RATIO,
            num_workers: int | None = None) -> dict[str, Any]:
    """Run the installed energon's ``prepare`` on ``directory`` for exactly ``shards``.

    Returns ``{"split": {part: [names]}, "shard_counts": {name: n}, "command": [...]}``;
    raises :class:`MmstreamError` with energon's output when it fails.
    """
    if not shards:
        raise MmstreamError(f"{directory}: no shards to prepare for energon (every sample was dropped?)")
    directory = os.path.abspath(directory)
    split = split_shards(shards, split_ratio)
    workers = num_workers or max(1, min(MAX_INDEX_WORKERS, os.cpu_count() or 1, len(shards)))
    args = prepare_args(directory, sorted(shards), split, num_workers=workers)
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI], input=json.dumps(args), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout or ""
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-20:])
        raise MmstreamError(f"energon prepare failed on {directory} (exit {proc.returncode}):\n{tail}")
    info = read_info(directory)
    missing = sorted(set(shards) - set(info["shard_counts"]))
    if missing:
        raise MmstreamError(f"energon prepare did not index {missing[:5]} in {directory}")
    return {"split": split, "shard_counts": info["shard_counts"], "energon_version": info.get("energon_version"),
            "command": ["energon"] + args}


def read_info(directory: str) -> dict[str, Any]:
    """energon's ``.nv-meta/.info.json`` (``shard_counts``, ``energon_version``)."""
    path = os.path.join(directory, META_DIR, ".info.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise MmstreamError(f"cannot read energon's index info {path}: {exc}") from None
