"""The ``mlqe-pe`` preset: MLQE-PE post-edits of machine translation, read as shipped.

MLQE-PE (Fomicheva et al., LREC 2022; ``sheffieldnlp/mlqe-pe``, ``data/post-editing/``)
ships one ``{pair}-{split}.tar.gz`` per language pair and split that unpacks to a folder
``{pair}-{split}/`` (``ro-en-train/``, ``ro-en-dev/``, ``ro-en-test20/``) of line-aligned
files ``{split}.src``, ``.mt``, ``.pe``, ``.tags``, ``.source_tags``, ``.hter`` (one segment
per line, words separated by spaces). This module reads either the archive (members
through :mod:`tarfile`, nothing extracted) or the extracted folder, checks that the files
agree line by line, and turns each segment into an :class:`EditPair`:

- ``prompt``: a translation instruction carrying the language pair and the source
  sentence (:data:`PROMPT_TEMPLATE`; replace it with ``template=`` in Python or the
  ``EDITALIGN_MLQE_TEMPLATE`` environment variable for every command; a JSON list of chat
  messages makes a chat prompt);
- ``original``: the MT; ``revised``: the post-edit;
- ``meta``: the official word-level tags (``mt_tags``: one per MT word; ``gap_tags``: the
  N+1 gaps; ``source_tags``), ``hter``, the language pair and the split.

The ``.tags`` line holds 2N+1 tags for N MT words: gap, word, gap, ..., word, gap.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editalign.data.pair import DataError, Prompt
from editalign.data.rows import _Parts, _Row

# Language pairs of MLQE-PE's post-editing data (and its other WMT QE pairs), code → name.
LANGUAGES = {"en": "English", "de": "German", "ro": "Romanian", "et": "Estonian",
             "ru": "Russian", "zh": "Chinese", "ne": "Nepali", "si": "Sinhala",
             "ps": "Pashto", "km": "Khmer", "ja": "Japanese"}
LANGUAGE_PAIRS = ("en-de", "ro-en", "et-en", "ru-en", "en-zh", "ne-en", "si-en", "ps-en",
                  "km-en", "en-ja")

PROMPT_TEMPLATE = ("Translate the following {src_lang} sentence into {tgt_lang}.\n\n"
                   "{src_lang}: {source}\n{tgt_lang}: ")
TEMPLATE_ENV = "EDITALIGN_MLQE_TEMPLATE"
# File kinds by suffix; ``src`` and ``mt`` are required, the rest optional (WMT's later
# test sets ship without post-edits; a pair needs ``pe``).
KINDS = ("src", "mt", "pe", "tags", "source_tags", "hter")
TAG_VALUES = frozenset({"OK", "BAD"})


@dataclass
class Segment:
    """One MLQE-PE line: source, MT, optional post-edit and official labels."""

    index: int  # 0-based line index
    language_pair: str
    split: str
    src: str
    mt: str
    pe: str | None = None
    mt_tags: list[str] | None = None  # one per MT word
    gap_tags: list[str] | None = None  # N+1 gaps around the N MT words
    source_tags: list[str] | None = None
    hter: float | None = None
    files: dict[str, str] = field(default_factory=dict)  # kind → file name, for errors

    @property
    def mt_words(self) -> list[str]:
        return self.mt.split()


def _lines(data: bytes, name: str) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = 1 + data.count(b"\n", 0, exc.start)
        raise DataError(f"not valid UTF-8 at line {line} ({exc.reason})", source=name) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _kind(name: str) -> tuple[str, str] | None:
    """(split, kind) of a member name such as ``ro-en-dev/dev.source_tags``."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, suffix = base.partition(".")
    return (stem, suffix) if dot and suffix in KINDS else None


def _folder_pair(folder: str, source: str) -> str:
    """The language pair from a folder name ``{pair}-{split}``; unknown pairs are errors."""
    head = folder.rstrip("/").rsplit("/", 1)[-1]
    pair = head[:5]
    if len(head) < 6 or head[5] != "-" or pair not in LANGUAGE_PAIRS:
        raise DataError(f"unknown language pair in folder name {head!r}: MLQE-PE folders are "
                        f"named PAIR-SPLIT with PAIR one of {', '.join(LANGUAGE_PAIRS)} "
                        "(e.g. ro-en-train)", source=source)
    return pair


def _read_files(path: Path) -> tuple[str, dict[str, tuple[str, list[str]]]]:
    """The folder name and ``{kind: (display name, lines)}`` of an archive or a folder."""
    source = os.fspath(path)
    found: dict[str, tuple[str, bytes]] = {}
    if path.is_dir():
        folder = path.name
        for member in sorted(path.iterdir()):
            if member.is_file() and (kind := _kind(member.name)):
                found[kind[1]] = (f"{source}/{member.name}", member.read_bytes())
    elif path.is_file():
        try:
            archive = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read as a tar archive: {exc}", source=source) from None
        with archive:
            members = [m for m in archive.getmembers() if m.isfile() and _kind(m.name)]
            folders = {m.name.rsplit("/", 1)[0] for m in members if "/" in m.name}
            if len(folders) != 1:
                raise DataError("expected one folder PAIR-SPLIT/ of MLQE-PE files (.src, .mt, "
                                f"...) in the archive, found {sorted(folders) or 'none'}",
                                source=source)
            folder = folders.pop()
            for member in members:
                handle = archive.extractfile(member)
                assert handle is not None  # regular files only
                found[_kind(member.name)[1]] = (f"{source}:{member.name}", handle.read())
    else:
        raise DataError("no such file or directory", source=source)
    for kind in ("src", "mt"):
        if kind not in found:
            raise DataError(f"no .{kind} file: an MLQE-PE folder holds SPLIT.src, SPLIT.mt "
                            "(and .pe, .tags, .source_tags, .hter)", source=source)
    return folder, {kind: (name, _lines(data, name)) for kind, (name, data) in found.items()}


def _tags(name: str, line_no: int, line: str) -> list[str]:
    tags = line.split()
    bad = next((t for t in tags if t not in TAG_VALUES), None)
    if bad is not None:
        raise DataError(f"unknown tag {bad!r}; tags are OK or BAD", source=name, line=line_no)
    return tags


def read_segments(source: str | os.PathLike[str]) -> list[Segment]:
    """Every segment of an MLQE-PE archive or extracted folder, checked.

    Raises :class:`DataError` naming the file and line when the files differ in line
    count, a ``.tags`` line does not hold 2N+1 tags for N MT words, a ``.source_tags`` line
    not one per source word, an HTER is not a number, or the folder's language pair is
    unknown.
    """
    path = Path(source)
    folder, files = _read_files(path)
    pair = _folder_pair(folder, os.fspath(path))
    split = folder.rstrip("/").rsplit("/", 1)[-1][6:]
    src_name, src_lines = files["src"]
    for name, lines in files.values():
        if len(lines) != len(src_lines):
            first = min(len(lines), len(src_lines)) + 1
            raise DataError(f"has {len(lines)} lines but {src_name} has {len(src_lines)}: the "
                            f"files must be line-aligned (line {first} is in one only)",
                            source=name, line=first)
    segments = []
    names = {kind: name for kind, (name, _) in files.items()}
    for i, (src, mt) in enumerate(zip(src_lines, files["mt"][1], strict=True)):
        seg = Segment(index=i, language_pair=pair, split=split, src=src, mt=mt, files=names)
        if "pe" in files:
            seg.pe = files["pe"][1][i]
        if "tags" in files:
            name, lines = files["tags"]
            tags = _tags(name, i + 1, lines[i])
            n = len(mt.split())
            if len(tags) != 2 * n + 1:
                raise DataError(f"{len(tags)} tags, but the MT line has {n} words, so 2N+1 = "
                                f"{2 * n + 1} (gap, word, gap, ..., word, gap) are expected",
                                source=name, line=i + 1)
            seg.mt_tags, seg.gap_tags = tags[1::2], tags[0::2]
        if "source_tags" in files:
            name, lines = files["source_tags"]
            tags = _tags(name, i + 1, lines[i])
            if len(tags) != len(src.split()):
                raise DataError(f"{len(tags)} source tags, but the source line has "
                                f"{len(src.split())} words", source=name, line=i + 1)
            seg.source_tags = tags
        if "hter" in files:
            name, lines = files["hter"]
            try:
                seg.hter = float(lines[i])
            except ValueError:
                raise DataError(f"HTER {lines[i]!r} is not a number", source=name,
                                line=i + 1) from None
        segments.append(seg)
    return segments


def is_mlqe_source(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an MLQE-PE archive or folder (for commands that accept
    both MLQE-PE data and labelled pairs)."""
    p = Path(path)
    if p.is_dir():
        return any(_kind(m.name) for m in p.iterdir() if m.name.endswith((".mt", ".src")))
    return p.name.endswith((".tar.gz", ".tgz", ".tar"))


# --------------------------------------------------------------------------- prompt


def load_template(value: str | None = None) -> str | list[dict[str, str]]:
    """The prompt template: ``value``, else ``$EDITALIGN_MLQE_TEMPLATE``, else the default.

    A value naming an existing file is read from it. Text that parses as a JSON list of
    ``{"role", "content"}`` messages is a chat template (each content is formatted).
    Placeholders: ``{source}``, ``{src_lang}``, ``{tgt_lang}``, ``{language_pair}``.
    """
    value = value if value is not None else os.environ.get(TEMPLATE_ENV)
    if not value:
        return PROMPT_TEMPLATE
    if len(value) < 4096 and Path(value).is_file():
        value = Path(value).read_text(encoding="utf-8")
    if value.lstrip().startswith("["):
        try:
            messages = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"MLQE-PE chat template is not valid JSON: {exc}") from None
        if not (isinstance(messages, list) and all(
                isinstance(m, Mapping) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages)):
            raise ValueError("an MLQE-PE chat template must be a JSON list of "
                             '{"role": ..., "content": ...} messages')
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return value


def render_prompt(segment: Segment, template: str | list[dict[str, str]]) -> Prompt:
    """The translation instruction for ``segment`` (text or chat messages)."""
    src, tgt = segment.language_pair.split("-")
    values = {"source": segment.src, "src_lang": LANGUAGES[src], "tgt_lang": LANGUAGES[tgt],
              "language_pair": segment.language_pair}
    try:
        if isinstance(template, str):
            return template.format(**values)
        return [{"role": m["role"], "content": m["content"].format(**values)} for m in template]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad MLQE-PE prompt template: {exc!r}; placeholders are "
                         "{source}, {src_lang}, {tgt_lang}, {language_pair}") from None


def segment_meta(segment: Segment) -> dict[str, Any]:
    return {"source": "mlqe-pe", "language_pair": segment.language_pair,
            "split": segment.split, "line": segment.index + 1, "src": segment.src,
            "mt_tags": segment.mt_tags, "gap_tags": segment.gap_tags,
            "source_tags": segment.source_tags, "hter": segment.hter}


# --------------------------------------------------------------------------- preset hooks


def read_rows(path: Path, source: str, split: str | None) -> tuple[
        Generator[_Row, None, None], str]:
    """The preset's reader: one row per segment (``split`` must match the folder's, if given)."""
    segments = read_segments(path)
    found = segments[0].split if segments else None
    if split is not None and found is not None and split != found:
        raise DataError(f"split {split!r} was given, but this MLQE-PE data is split "
                        f"{found!r}; pass the {split} archive or folder", source=source)
    template = load_template()

    def rows() -> Generator[_Row, None, None]:
        for seg in segments:
            record = {"id": f"{seg.language_pair}-{seg.split}-{seg.index}", "segment": seg,
                      "template": template}
            yield _Row(record, source, seg.index, seg.index + 1)
    return rows(), found or split or ""


def build(row: _Row, fields: Mapping[str, str]) -> _Parts:
    seg: Segment = row.record["segment"]
    if seg.pe is None:
        raise DataError("no .pe file: the post-edit is the revised response of a pair "
                        "(for QE without post-edits use `editalign eval qe`)",
                        source=row.source, row=row.index, line=row.line)
    return _Parts(render_prompt(seg, row.record["template"]), seg.mt, seg.pe,
                  segment_meta(seg))
