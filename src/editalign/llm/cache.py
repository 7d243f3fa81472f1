"""A per-request cache on disk (SQLite) so that no answered request is ever paid for twice.

The key is a hash of everything that determines the answer: the endpoint, the model, the
messages and the sampling parameters (never the API key). Each answer is committed as
soon as it arrives, so a crash or Ctrl-C loses at most the requests still in flight, and
rerunning the same command answers every finished request from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def request_key(api_base: str, model: str, messages: list[dict[str, str]],
                params: dict[str, Any]) -> str:
    """Stable hash of one request (endpoint without trailing slash, model, messages, params)."""
    blob = json.dumps({"api_base": api_base.rstrip("/"), "model": model, "messages": messages,
                       "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """``key -> answer`` (a JSON object) in a SQLite file (WAL mode, one commit per answer).

    Safe to share between threads of one process and between processes: SQLite locks
    the file, and ``put`` of an existing key keeps the first answer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, "
                         "answer TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                             (key, json.dumps(answer, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
