"""The mlqe-pe preset: MLQE-PE archives and folders, and their errors."""

from __future__ import annotations

import io
import json
import re
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


def test_split_must_match_the_folder_and_pe_is_needed_for_pairs(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(DataError, match="split 'dev' was given"):
        load_pairs(archive, preset="mlqe-pe", split="dev")
    folder = make_folder(tmp_path)
    (folder / "test20.pe").unlink()
    with pytest.raises(DataError, match=r"no \.pe file") as err:
        load_pairs(folder, preset="mlqe-pe")
    assert err.value.line == 1
    assert read_segments(folder)[0].pe is None  # QE reads it without post-edits


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


# --------------------------------------------------------------------------- eval qe

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.metrics import f1_score, matthews_corrcoef  # noqa: E402

from editalign.eval import qe  # noqa: E402


def test_tokens_map_to_space_separated_words_and_a_word_takes_its_worst_token():
    text = "The cattle sat ."
    # tokens: "The", " cat", "tle", " sat", " .", EOS
    offsets = [(0, 3), (3, 7), (7, 10), (10, 14), (14, 16), (0, 0)]
    groups = qe.token_words(text, offsets)
    assert groups == [[0], [1, 2], [3], [4]]
    scores = qe.word_scores([0.5, 0.9, -0.2, 0.1, 0.3, 7.0], groups)
    assert scores.tolist() == [0.5, -0.2, 0.1, 0.3]
    # a token spanning two words belongs to both
    assert qe.token_words("ab cd", [(0, 4), (4, 5)]) == [[0], [0, 1]]


def test_tag_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        bad = rng.random(300) < 0.3
        pred = rng.random(300) < 0.4
        m = qe.tag_metrics(bad, pred)
        assert m["mcc"] == pytest.approx(matthews_corrcoef(bad, pred))
        f1_bad, f1_ok = f1_score(bad, pred), f1_score(~bad, ~pred)
        assert m["f1_bad"] == pytest.approx(f1_bad) and m["f1_ok"] == pytest.approx(f1_ok)
        assert m["f1_mult"] == pytest.approx(f1_bad * f1_ok)
    # a constant prediction: MCC 0 (sklearn's convention), F1-OK 0 for all-BAD
    bad = rng.random(50) < 0.3
    m = qe.tag_metrics(bad, np.ones(50, bool))
    assert m["mcc"] == matthews_corrcoef(bad, np.ones(50, bool)) == 0
    assert m["f1_ok"] == 0 and m["f1_mult"] == 0


def test_pearson_and_spearman_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    y[:20] = np.round(y[:20])  # ties for the ranks
    x[5:15] = 1.0
    assert qe.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert qe.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_threshold_maximises_mcc_over_every_cut():
    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=400), 1)  # many ties
    bad = rng.random(400) < 1 / (1 + np.exp(3 * scores))
    t = qe.choose_threshold(scores, bad)
    best = max(matthews_corrcoef(bad, scores <= c) for c in np.unique(scores))
    assert matthews_corrcoef(bad, scores <= t) == pytest.approx(best)


def _sentences(rng, n):
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 12))
        bad = rng.random(k) < 0.3
        scores = np.where(bad, -0.5, 0.5) + rng.normal(scale=0.6, size=k)
        out.append(qe.QESentence(word_scores=scores, bad=bad, reward_sum=float(scores.sum()),
                                 hter=float(bad.mean()), edited=bad.copy()))
    return out


def test_threshold_is_chosen_on_dev_only():
    rng = np.random.default_rng(3)
    dev, test = _sentences(rng, 80), _sentences(rng, 80)
    first = qe.evaluate_qe(dev, test, n_resamples=200)
    flipped = [qe.QESentence(s.word_scores, ~s.bad, s.reward_sum, 1 - s.hter, s.edited)
               for s in test]
    second = qe.evaluate_qe(dev, flipped, n_resamples=200)
    assert second["model"]["threshold"] == first["model"]["threshold"]
    assert second["model"]["mcc"] == pytest.approx(-first["model"]["mcc"])
    # and it moves when dev changes
    dev_shift = [qe.QESentence(s.word_scores + 1.0, s.bad) for s in dev]
    assert qe.evaluate_qe(dev_shift, test, n_resamples=50)["model"]["threshold"] \
        == pytest.approx(first["model"]["threshold"] + 1.0)


def test_references_and_bootstrap_interval():
    rng = np.random.default_rng(4)
    dev, test = _sentences(rng, 60), _sentences(rng, 60)
    result = qe.evaluate_qe(dev, test, n_resamples=300)
    low, high = result["model"]["mcc_ci95"]
    assert low < result["model"]["mcc"] < high
    refs = result["references"]
    assert refs["all BAD"]["mcc"] == 0 and refs["all BAD"]["f1_ok"] == 0
    assert refs["edit labels (oracle, sees the post-edit)"]["mcc"] == 1.0
    random_name = next(name for name in refs if name.startswith("random"))
    assert abs(refs[random_name]["mcc"]) < 0.15
    assert result["model"]["sentence"]["pearson"] > 0  # −Σ reward rises with HTER here


def test_eval_qe_end_to_end_on_a_tiny_reward_model(tmp_path, capsys):
    train = make_archive(tmp_path / "ro-en-train.tar.gz")
    dev = make_archive(tmp_path / "ro-en-dev.tar.gz", folder="ro-en-dev", split="dev")
    # a test set without post-edits (as WMT21's): the oracle row is left out
    test = make_folder(tmp_path, folder="ro-en-test21", split="test21")
    (test / "test21.pe").unlink()
    rm = tmp_path / "rm"
    assert main(["train", "token-rm", "--data", str(train), "--preset", "mlqe-pe",
                 "--model", "tiny", "--max_steps", "1", "--use_cpu", "--save_strategy", "no",
                 "--report_to", "none", "--output_dir", str(rm)]) == 0
    out = tmp_path / "qe"
    assert main(["eval", "qe", "--reward-model", str(rm), "--data", str(test), "--dev", str(dev),
                 "--out", str(out)]) == 0
    result = json.loads((out / "qe.json").read_text())
    assert result["test"]["words"] == 10 and result["test"]["bad_rate"] == 0.1
    assert not any(name.startswith("edit labels") for name in result["references"])
    assert "F1-MULT" in (out / "qe.md").read_text()
    page = (out / "index.html").read_text()
    assert "official MLQE-PE tag is BAD" in page
    # the one official BAD word ("at") is marked, whatever the model says about it
    marked = re.findall(r"<span class='t[^']*human'[^>]*>([^<]*)</span>", page)
    assert "".join(marked).strip() == "at"
