"""Annotation storage: SQLite in WAL mode, safe for several annotators at once.

Two tables: ``items`` (the pairs to annotate, imported once from the data file and never
changed) and ``annotations`` (one row per item and annotator: the edited response, the
marked error spans and a version number). A save names the version it started from; the
update happens inside ``BEGIN IMMEDIATE`` (one writer at a time) and is refused with
:class:`Conflict` when someone saved a newer version in between, so no write is ever
silently lost. Different annotators never overwrite each other: each has their own row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from editalign.data.pairs import EditPair

ANNOTATOR = re.compile(r"[\w.@+ -]{1,64}")  # always with fullmatch: "$" lets a "\n" through
MAX_TEXT = 200_000
MAX_SPANS = 500
SPAN_TYPES = ("error", "factual", "irrelevant", "incomplete", "unwanted", "other")


class Conflict(Exception):
    """A save based on an out-of-date version; ``current`` is the stored annotation."""

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__("a newer version was saved in the meantime")
        self.current = current


class Invalid(ValueError):
    """A save that breaks a rule (size, span bounds, annotator name); names the field."""


def _is_text(value: Any) -> bool:
    """A string SQLite and UTF-8 JSON can hold (JSON may carry unpaired surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _schema(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE IF NOT EXISTS items (
            id TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, prompt TEXT NOT NULL,
            original TEXT NOT NULL, revised TEXT NOT NULL, meta TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS annotations (
            item_id TEXT NOT NULL REFERENCES items(id), annotator TEXT NOT NULL,
            revised TEXT NOT NULL, spans TEXT NOT NULL, version INTEGER NOT NULL,
            updated REAL NOT NULL, PRIMARY KEY (item_id, annotator));
    """)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_spans(spans: Any, length: int) -> list[dict[str, Any]]:
    """Error spans as ``{start, end, type, explanation}`` inside ``[0, length]``."""
    if not isinstance(spans, list | tuple) or len(spans) > MAX_SPANS:
        raise Invalid(f"field 'spans': expected a list of at most {MAX_SPANS} objects, got "
                      f"{_kind(spans)}")
    clean = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict):
            raise Invalid(f"field 'spans[{i}]': expected an object, got {_kind(span)}")
        start, end = span.get("start"), span.get("end")
        if not (type(start) is int and type(end) is int and 0 <= start < end <= length):
            raise Invalid(f"field 'spans[{i}]': start={_short(start)} end={_short(end)} must "
                          f"satisfy 0 <= start < end <= {length} (the length of the original)")
        kind = span.get("type", "error")
        explanation = span.get("explanation", "")
        if not isinstance(kind, str) or kind not in SPAN_TYPES:
            raise Invalid(f"field 'spans[{i}].type': expected one of {', '.join(SPAN_TYPES)}")
        if not _is_text(explanation) or len(explanation) > 2000:
            raise Invalid(f"field 'spans[{i}].explanation': expected text of at most 2000 "
                          "characters")
        clean.append({"start": start, "end": end, "type": kind, "explanation": explanation})
    return sorted(clean, key=lambda s: (s["start"], s["end"]))


class AnnotationStore:
    """The annotation database; one connection per thread (the web server is threaded)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        _schema(self._db())  # executescript manages its own transaction

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------------ items

    def import_pairs(self, pairs: Iterable[EditPair]) -> int:
        """Add pairs not yet in the store (matched by id); returns how many were added.

        A pair whose id is already stored must be that same item (a restart with the same
        data): an id given twice, or one the database holds for another text, raises
        ``ValueError`` naming it, and nothing is added.
        """
        added = 0
        given: set[str] = set()
        with self._tx() as db:
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM items").fetchone()[0]
            for pair in pairs:
                if pair.id in given:
                    raise ValueError(f"id {pair.id!r} is given to two pairs; every item needs "
                                     "its own id")
                given.add(pair.id)
                values = (json.dumps(pair.prompt, ensure_ascii=False), pair.original,
                          pair.revised)
                stored = db.execute("SELECT prompt, original, revised FROM items WHERE id = ?",
                                    (pair.id,)).fetchone()
                if stored is not None:
                    if tuple(stored) != values:
                        raise ValueError(f"{self.path}: item {pair.id!r} is stored with another "
                                         "prompt or response than the data gives it now; use a "
                                         "new --db for changed data")
                    continue
                db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                           (pair.id, position, *values,
                            json.dumps(pair.meta, ensure_ascii=False)))
                position, added = position + 1, added + 1
        return added

    def count(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def item(self, position: int) -> dict[str, Any] | None:
        row = self._db().execute("SELECT * FROM items WHERE position = ?", (position,)).fetchone()
        if row is None:
            return None
        return {"id": row["id"], "position": row["position"],
                "prompt": json.loads(row["prompt"]), "original": row["original"],
                "revised": row["revised"], "meta": json.loads(row["meta"])}

    # ------------------------------------------------------------------ annotations

    def annotation(self, item_id: str, annotator: str) -> dict[str, Any] | None:
        row = self._db().execute(
            "SELECT revised, spans, version, updated FROM annotations "
            "WHERE item_id = ? AND annotator = ?", (item_id, annotator)).fetchone()
        if row is None:
            return None
        return {"revised": row["revised"], "spans": json.loads(row["spans"]),
                "version": row["version"], "updated": row["updated"]}

    def save(self, position: int, annotator: Any, revised: Any, spans: Any,
             version: Any) -> int:
        """Store an annotation made from ``version`` (0: none yet); returns the new version.

        Raises :class:`Conflict` when the stored version differs (a lost update
        prevented), :class:`Invalid` for bad input (any JSON value may arrive here: every
        field's type is checked), ``KeyError`` for an unknown item.
        """
        if not isinstance(annotator, str) or not ANNOTATOR.fullmatch(annotator):
            raise Invalid("field 'annotator': expected 1-64 letters, digits, spaces or "
                          ". @ + - _")
        if not _is_text(revised) or len(revised) > MAX_TEXT:
            raise Invalid(f"field 'revised': expected text of at most {MAX_TEXT} characters")
        if type(version) is not int or version < 0:
            raise Invalid("field 'version': expected a non-negative integer")
        with self._tx() as db:
            item = db.execute("SELECT id, original FROM items WHERE position = ?",
                              (position,)).fetchone()
            if item is None:
                raise KeyError(position)
            clean = validate_spans(spans, len(item["original"]))
            row = db.execute("SELECT version FROM annotations WHERE item_id = ? AND annotator = ?",
                             (item["id"], annotator)).fetchone()
            current = 0 if row is None else row["version"]
            if current != version:
                raise Conflict(self.annotation(item["id"], annotator) or {})
            db.execute(
                "INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(item_id, annotator)"
                " DO UPDATE SET revised = excluded.revised, spans = excluded.spans, "
                "version = excluded.version, updated = excluded.updated",
                (item["id"], annotator, revised, json.dumps(clean), current + 1, time.time()))
        return current + 1

    def export_pairs(self) -> list[EditPair]:
        """Every saved annotation as an EditPair, in item order then annotator.

        The id is the item's id when one annotator edited the item, else
        ``ID@ANNOTATOR``; should that be another item's id (or an id already exported),
        ``~2``, ``~3``, ... is added until it is unique (``meta["renamed_from"]`` keeps
        the first choice), so no two exported pairs share an id; ``meta`` adds ``annotator``, ``error_spans`` (offsets into
        ``original``), ``annotated_at`` and ``source: "annotate"`` to the item's own meta.
        """
        rows = self._db().execute(
            "SELECT i.*, a.annotator, a.revised AS edited, a.spans, a.updated, a.version, "
            "(SELECT COUNT(*) FROM annotations b WHERE b.item_id = i.id) AS n "
            "FROM annotations a JOIN items i ON i.id = a.item_id "
            "ORDER BY i.position, a.annotator").fetchall()
        pairs = []
        taken = {r[0] for r in self._db().execute("SELECT id FROM items")}
        used: set[str] = set()
        for row in rows:
            meta = json.loads(row["meta"])
            if "error_spans" in meta:
                meta["input_error_spans"] = meta.pop("error_spans")
            meta.update({"source": "annotate", "annotator": row["annotator"],
                         "error_spans": json.loads(row["spans"]), "version": row["version"],
                         "annotated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                       time.gmtime(row["updated"]))})
            if row["revised"] != row["original"]:
                meta.setdefault("input_revised", row["revised"])
            pair_id = row["id"] if row["n"] == 1 else f"{row['id']}@{row['annotator']}"
            chosen, k = pair_id, 1
            while pair_id in used or (pair_id != row["id"] and pair_id in taken):
                k += 1
                pair_id = f"{chosen}~{k}"
            if pair_id != chosen:
                meta["renamed_from"] = chosen
            used.add(pair_id)
            pairs.append(EditPair(prompt=json.loads(row["prompt"]), original=row["original"],
                                  revised=row["edited"], id=pair_id, meta=meta))
        return pairs
