"""``mmstream verify``: re-read every shard and check it against the manifest."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Re-read every shard listed in DIR/manifest.json and check its size, sha256, sample
count and keys; check that no key is in two shards, that the kept count adds up,
and that the trainer metadata agrees (energon's index counts and split, or the JSON
list's checksum and that every image path in it exists). Exit status 1 on any
mismatch.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check the shards against manifest.json (exit 1 on mismatch)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="a finalized cache folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import storage
    from ..sinks.manifest import verify

    if storage.is_url(args.dir):  # a bucket: read back, then checked (credentials from the environment)
        from ..sinks.remote import verify_url

        report = verify_url(args.dir)
    else:
        report = verify(args.dir)
    print(report)
    return 0 if report.ok else 1
