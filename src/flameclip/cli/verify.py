"""``flameclip verify``: is every shard of a store whole (sizes and sha256)?"""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("verify", help="check that every shard of an embedding store is whole (sizes and sha256)")
    p.add_argument("store", help="the folder made by `flameclip embed`")
    return p


def run(args) -> int:
    from ..store import read_manifest
    from ..store.verify import verify_store

    manifest = read_manifest(args.store)
    if manifest is None:
        raise FileNotFoundError(f"{args.store} is not an embedding store (no manifest.json)")
    checked, problems = verify_store(args.store, manifest, full=True)
    for line in problems:
        print(line)
    print(f"{'shards':<10} {checked}\n{'damaged':<10} {len(problems)}\n{'verdict':<10} "
          + ("whole" if not problems else "damaged: run the same `flameclip embed` command to embed those shards again"))
    return 0 if not problems else 1
