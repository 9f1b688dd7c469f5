"""The ``llama download`` subcommand: fetch a public file the book uses, checking its sha256."""

from __future__ import annotations

import argparse


def add(subparsers) -> None:
    p = subparsers.add_parser(
        "download",
        help="fetch a public file the book uses (a tiny model, a tokenizer, training text)",
        description="Fetch a public file the book uses into the download cache, checking its sha256.\n"
        "A file already in $LLAMA_DATA_DIR or the cache is not downloaded again.",
        epilog="examples:\n  llama download --list\n  llama download stories260K",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (see --list)")
    p.add_argument("--list", action="store_true", help="show what can be downloaded, and where each file is")
    p.set_defaults(func=run)


# --8<-- [start:run]
def run(args) -> int:
    from llama.data.sources import DATASETS, cache_dir, dataset, download, find_data

    if args.list:
        for d in DATASETS.values():
            try:
                found = find_data(d.filename) or "not here yet"
            except ValueError as err:  # one damaged copy: said on its line, and the list goes on
                found = f"damaged: {err}"
            print(f"{d.name:<17} {d.description}\n{'':<17} {found}")
        print(f"downloads go to {cache_dir()} (set LLAMA_CACHE_DIR to change it)")
        return 0
    if not args.names:
        raise ValueError(f"name what to download ({', '.join(DATASETS)}), or pass --list")
    for name in args.names:
        dataset(name)  # every name checked before anything is fetched
    for name in args.names:
        path, fetched = download(name)
        print(f"{'downloaded' if fetched else 'already here, not downloaded:'} {path}")
    return 0
# --8<-- [end:run]
