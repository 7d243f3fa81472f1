"""``editalign annotate``: serve the web tool, or export what annotators saved."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from editalign.commands.common import add_config_argument
from editalign.data.arguments import add_data_arguments

NAME = "annotate"
HELP = ("web tool for people to edit responses minimally (live diff, error spans, export to "
        "EditPair JSONL)")
DESCRIPTION = ("Serve a local web app where annotators edit the worse response in place; see "
               "docs/annotate.md.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    add_data_arguments(p, ["data", "preset", "field_map", "split", "limit"], help={
        "data": "pairs to annotate: any file or preset `editalign label` reads (the original "
                "is the response people edit); --field response=COLUMN for rows with only a "
                "prompt and a response",
        "field_map": "explicit field mapping as in `editalign label`; repeatable"})
    p.add_argument("--db", help="annotation database (SQLite; default: DATA's name with "
                   ".annotate.sqlite). Restarting with the same database keeps all work.")
    p.add_argument("--out", help="export file (EditPair JSONL) for the Export button and "
                   "--export (default: the database's name with .edits.jsonl)")
    p.add_argument("--export", action="store_true",
                   help="write the export file and exit instead of serving")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s); any other address "
                   "requires a token")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0 picks "
                   "a free one)")
    p.add_argument("--token", help="access token (default: none on 127.0.0.1, a random one "
                   "elsewhere; also read from $EDITALIGN_ANNOTATE_TOKEN)")


def _default_db(data: str) -> Path:
    path = Path(data)
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        name = name.removesuffix(suffix)
    return path.with_name(name + ".annotate.sqlite")


def run(args: argparse.Namespace) -> int:
    from editalign.annotate.server import AnnotateServer, is_loopback
    from editalign.annotate.store import AnnotationStore
    from editalign.data.pairs import load_pairs, save_pairs_jsonl
    from editalign.revise.reviser import revise_fields

    if not args.data and not args.db:
        raise SystemExit("editalign annotate: --data (or --db of an earlier session) required")
    db = Path(args.db) if args.db else _default_db(args.data)
    out = Path(args.out) if args.out else db.with_name(
        db.name.removesuffix(".sqlite").removesuffix(".annotate") + ".edits.jsonl")
    from editalign.outputs import check_file

    # Before the database is opened or the data read: the export must not be an input.
    check_file(out, flag="--out", inputs={"--data": args.data, "--db": db})
    if args.data:
        check_file(db, flag="--db", inputs={"--data": args.data})
    store = AnnotationStore(db)
    if args.data:
        pairs, report = load_pairs(args.data, preset=args.preset,
                                   fields=revise_fields(args.field), split=args.split,
                                   limit=args.limit)
        print(report.summary())
        added = store.import_pairs(pairs)
        print(f"{db}: {store.count()} items ({added} new)")
    if args.export:
        pairs = store.export_pairs()
        save_pairs_jsonl(pairs, out)
        renamed = sum("renamed_from" in p.meta for p in pairs)
        print(f"wrote {len(pairs)} edited pairs to {out}"
              + (f" ({renamed} ids renamed with ~N: ID@ANNOTATOR was another item's id; "
                 "meta.renamed_from has the first choice)" if renamed else ""))
        return 0
    token = args.token or os.environ.get("EDITALIGN_ANNOTATE_TOKEN")
    if not token and not is_loopback(args.host):
        token = secrets.token_urlsafe(24)
    server = AnnotateServer(store, args.host, args.port, token=token, export_path=out)
    print(f"annotate: open {server.url}  (Ctrl-C stops; the work is saved as you go)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
    return 0
