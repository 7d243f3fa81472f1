"""File readers: JSONL, JSON, CSV (optionally gzipped), Parquet and ``datasets``
directories, each yielding :class:`~editalign.data.rows._Row` records with the line they
came from."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO, Any

from editalign.data.pair import DataError
from editalign.data.rows import _describe, _keys, _Row

# --------------------------------------------------------------------------- readers

# Readers are generators so that load_pairs can close the file when ``limit`` stops early.
_Rows = Generator[_Row, None, None]


def _utf8_error(source: str, data: bytes, exc: UnicodeDecodeError,
                first_line: int = 1) -> DataError:
    line = first_line + data.count(b"\n", 0, exc.start)
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return DataError(f"not valid UTF-8 at line {line}, byte {column} of that line "
                     f"({exc.reason}); save the file as UTF-8", source=source)


def _open_binary(path: Path) -> IO[bytes]:
    """Plain or gzip-compressed (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``)."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _decode_file(path: Path, source: str) -> str:
    with _open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _utf8_error(source, data, exc) from None


def _read_jsonl(path: Path, source: str) -> _Rows:
    """One JSON value per line, read line by line so errors can name the line."""
    index = 0
    with _open_binary(path) as handle:
        for line, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise _utf8_error(source, raw, exc, first_line=line) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}",
                                source=source, row=index, line=line) from None
            except RecursionError:
                raise DataError("JSON nested too deeply", source=source, row=index,
                                line=line) from None
            yield _Row(record, source, index, line)
            index += 1


def _json_records(data: Any, source: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1:
            return lists[0]
        found = f"an object with keys {_keys(data)}"
    else:
        found = _describe(data)
    raise DataError("expected a list of objects, or an object with one list-valued key such "
                    f'as {{"data": [...]}}; found {found}', source=source)


def _read_json(path: Path, source: str) -> _Rows:
    try:
        data = json.loads(_decode_file(path, source))
    except json.JSONDecodeError as exc:
        hint = ("; if the file holds one object per line, name it .jsonl"
                if exc.msg == "Extra data" else "")
        raise DataError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}{hint}", source=source) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", source=source) from None
    for index, record in enumerate(_json_records(data, source)):
        yield _Row(record, source, index)


def _read_csv(path: Path, source: str) -> _Rows:
    """CSV with a header row; a row's line is the line its record starts on."""
    reader = csv.DictReader(io.StringIO(_decode_file(path, source), newline=""))
    end = 0
    try:
        if reader.fieldnames is not None:
            end = reader.line_num
        for index, record in enumerate(reader):
            row = _Row(record, source, index, end + 1)
            end = reader.line_num
            if None in record:
                raise row.error(f"the row has {len(record[None])} more cells than the header "
                                "has columns")
            yield row
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", source=source, line=reader.line_num) from None


def _read_parquet(path: Path, source: str) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        records = itertools.chain.from_iterable(batch.to_pylist() for batch in batches)
        yield from (_Row(record, source, index) for index, record in enumerate(records))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", source=source) from None


def _load_dataset_dir(path: Path, source: str, split: str | None) -> tuple[Any, str | None]:
    """A ``save_to_disk`` directory; a DatasetDict picks ``split`` (default "train")."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError("the directory is not a data set saved with "
                        f"datasets' save_to_disk ({exc})", source=source) from None
    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"split {split!r} was given, but the directory holds a single "
                            "Dataset, which has no splits", source=source)
        return loaded, None
    if split is None and "train" not in loaded:
        raise DataError("no split was given and there is no 'train'; choose a split from: "
                        f"{', '.join(loaded)}", source=source)
    split = "train" if split is None else split
    if split not in loaded:
        raise DataError(f"there is no split {split!r}; choose a split from: "
                        f"{', '.join(loaded)}", source=source)
    return loaded[split], split


_READERS: dict[str, Callable[[Path, str], _Rows]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv,
}
SUPPORTED_FORMATS = (*_READERS, ".jsonl.gz", ".json.gz", ".csv.gz")


def _read_rows(path: Path, source: str, split: str | None) -> tuple[_Rows, str | None]:
    """Rows from any supported format, and the split used (dataset directories only)."""
    if path.is_dir():
        dataset, split = _load_dataset_dir(path, source, split)
        named = source if split is None else f"{source} (split {split})"
        return (_Row(record, named, index) for index, record in enumerate(dataset)), split
    if not path.exists():
        raise DataError("no such file or directory", source=source)
    if split is not None:
        raise DataError(f"split {split!r} applies only to a directory saved with "
                        "save_to_disk", source=source)
    suffixes = [suffix.lower() for suffix in path.suffixes[-2:]]
    if suffixes[-1:] == [".gz"] and suffixes[0] in (".jsonl", ".json", ".csv"):
        reader: Callable[[Path, str], _Rows] | None = _READERS[suffixes[0]]
    else:
        reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix or '(no extension)'!r}; "
                        f"supported: {', '.join(SUPPORTED_FORMATS)}, or a directory saved "
                        "with datasets' save_to_disk", source=source)
    return reader(path, source), None
