"""The mlqe-pe preset: MLQE-PE archives and folders, and their errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from editalign.cli import main
from editalign.data.mlqe import read_segments
from editalign.data.pairs import DataError, load_pairs

SRC = ["Pisica stă pe masă .", "Câinele doarme ."]
MT = ["The cat sits at table .", "The dog sleeps ."]
PE = ["The cat sits on the table .", "The dog sleeps ."]
# gap word gap ... for 6 and 4 MT words: "at" is substituted, a word is missing before "table"
TAGS = ["OK OK OK OK OK OK OK BAD BAD OK OK OK OK", "OK OK OK OK OK OK OK OK OK"]
SOURCE_TAGS = ["OK OK BAD OK OK", "OK OK OK"]
HTER = ["0.333333", "0.000000"]


def _files(split: str = "train", **override: list[str]) -> dict[str, list[str]]:
    files = {"src": SRC, "mt": MT, "pe": PE, "tags": TAGS, "source_tags": SOURCE_TAGS,
             "hter": HTER}
    files.update(override)
    return {f"{split}.{kind}": lines for kind, lines in files.items()}


def make_archive(path: Path, folder: str = "ro-en-train", split: str = "train",
                 **override: list[str]) -> Path:
    """An archive laid out as MLQE-PE ships it: one folder of line-aligned files."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, lines in _files(split, **override).items():
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_folder(root: Path, folder: str = "ro-en-test20", split: str = "test20",
                **override: list[str]) -> Path:
    out = root / folder
    out.mkdir()
    for name, lines in _files(split, **override).items():
        (out / name).write_text("\n".join(lines) + "\n")
    return out


def test_archive_becomes_pairs_with_prompt_mt_pe_and_official_tags(tmp_path):
    pairs, report = load_pairs(make_archive(tmp_path / "ro-en-train.tar.gz"), preset="mlqe-pe")
    assert report.kept == 2 and report.no_edit == 1 and report.split == "train"
    first = pairs[0]
    assert first.original == MT[0] and first.revised == PE[0]
    assert "Romanian" in first.prompt and "English" in first.prompt and SRC[0] in first.prompt
    assert first.id == "ro-en-train-0"
    meta = first.meta
    assert meta["mt_tags"] == ["OK", "OK", "OK", "BAD", "OK", "OK"]
    assert meta["gap_tags"] == ["OK", "OK", "OK", "OK", "BAD", "OK", "OK"]
    assert meta["source_tags"] == SOURCE_TAGS[0].split()
    assert meta["hter"] == pytest.approx(1 / 3, abs=1e-6)
    assert meta["language_pair"] == "ro-en" and meta["split"] == "train"
    json.dumps(meta)  # meta must stay serialisable


def test_extracted_folder_reads_the_same(tmp_path):
    folder = make_folder(tmp_path)
    pairs, report = load_pairs(folder, preset="mlqe-pe")
    assert [p.original for p in pairs] == MT and report.split == "test20"


def test_template_is_replaceable_including_chat(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "a.tar.gz")
    monkeypatch.setenv("EDITALIGN_MLQE_TEMPLATE", "{language_pair}|{source}")
    pairs, _ = load_pairs(archive, preset="mlqe-pe")
    assert pairs[0].prompt == f"ro-en|{SRC[0]}"
    chat = [{"role": "system", "content": "You translate {src_lang}."},
            {"role": "user", "content": "{source}"}]
    monkeypatch.setenv("EDITALIGN_MLQE_TEMPLATE", json.dumps(chat))
    pairs, _ = load_pairs(archive, preset="mlqe-pe")
    assert pairs[1].prompt == [{"role": "system", "content": "You translate Romanian."},
                               {"role": "user", "content": SRC[1]}]


def test_tag_line_that_is_not_2n_plus_1_names_the_file_and_line(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz", tags=[TAGS[0], "OK OK OK OK OK OK OK OK"])
    with pytest.raises(DataError) as err:
        read_segments(archive)
    assert err.value.line == 2 and "train.tags" in err.value.source
    assert "2N+1 = 9" in str(err.value)


def test_line_count_mismatch_names_the_file(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz", pe=PE[:1])
    with pytest.raises(DataError, match="has 1 lines but") as err:
        load_pairs(archive, preset="mlqe-pe")
    assert err.value.source.endswith("train.pe") and err.value.line == 2


def test_unknown_language_pair_and_bad_tag_values_are_errors(tmp_path):
    with pytest.raises(DataError, match="unknown language pair"):
        read_segments(make_archive(tmp_path / "a.tar.gz", folder="xx-yy-train"))
    bad = make_archive(tmp_path / "b.tar.gz", source_tags=["OK OK MAYBE OK OK", SOURCE_TAGS[1]])
    with pytest.raises(DataError, match="unknown tag 'MAYBE'") as err:
        read_segments(bad)
    assert err.value.line == 1


def test_cli_label_reports_agreement_and_exits_2_on_bad_data(tmp_path, capsys):
    archive = make_archive(tmp_path / "ro-en-train.tar.gz")
    out = tmp_path / "labels"
    assert main(["label", "--data", str(archive), "--preset", "mlqe-pe", "--model", "tiny",
                 "--granularity", "word", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    agreement = stats["official_tag_agreement"]
    # "at" substituted by "on the": the edit labels flag exactly the one BAD word.
    assert agreement["words"] == 10 and agreement["bad_official"] == 1
    assert agreement["precision"] == 1.0 and agreement["recall"] == 1.0
    broken = make_archive(tmp_path / "ro-en-dev.tar.gz", folder="ro-en-dev", split="dev",
                          hter=["0.1", "n/a"])
    assert main(["label", "--data", str(broken), "--preset", "mlqe-pe", "--model", "tiny",
                 "--out", str(tmp_path / "x")]) == 2
    assert "dev.hter: line 2" in capsys.readouterr().err
