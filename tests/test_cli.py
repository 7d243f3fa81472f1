import json
import subprocess
import sys

import datasets
import pytest

from editalign.cli import main

ROWS = [
    {"question": "Sky colour?", "answer": "The sky is green.", "fix": {"answer": "The sky is blue."}},
    {"question": "Grass colour?", "answer": "Grass is green.", "fix": {"answer": "Grass is green."}},
    {"question": "Empty?", "answer": "", "fix": {"answer": "Something."}},
]
FIELDS = ["--field", "prompt=question", "--field", "original=answer",
          "--field", "revised=fix.answer"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def test_label_writes_dataset_stats_and_preview(data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["label", "--data", str(data), *FIELDS, "--model", "tiny", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "labelled 2 of 2 pairs (1 with no edit)" in printed
    assert "empty original: 1" in printed
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 2
    assert {"original_input_ids", "original_labels", "revised_input_ids", "revised_labels"} \
        <= set(ds.column_names)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["load"]["skipped"] == {"empty original": 1}
    assert stats["labels"]["no_edit"] == 1 and stats["model"] == "tiny"
    assert set(stats["labels"]["edit_ratio"]) >= {"p50", "p90", "histogram"}
    assert "sky is" in (out / "preview.html").read_text()


def test_config_file_sets_options_and_flags_override_it(data, tmp_path):
    cfg = tmp_path / "label.yaml"
    cfg.write_text(f"data: {data}\nfield: [prompt=question, original=answer, "
                   "revised=fix.answer]\nmodel: tiny\ngranularity: word\nmax-length: 40\n")
    out = tmp_path / "out"
    assert main(["label", "--config", str(cfg), "--max-length", "30", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["granularity"] == "word"
    assert stats["config"]["max_length"] == 30


def test_config_file_with_unknown_option_is_refused(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("granularty: word\n")
    with pytest.raises(SystemExit):
        main(["label", "--config", str(cfg)])
    assert "unknown option 'granularty'" in capsys.readouterr().err


def test_bad_row_is_reported_with_file_line_and_field(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "original": "a", "revised": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "original": 3, "revised": "b"}) + "\n")
    code = main(["label", "--data", str(path), "--model", "tiny", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl" in err and "line 2" in err and "'original'" in err
    assert not (tmp_path / "o").exists()


def test_strict_turns_skips_into_errors(data, tmp_path, capsys):
    code = main(["label", "--data", str(data), *FIELDS, "--model", "tiny", "--strict",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "empty original" in capsys.readouterr().err


def test_unknown_model_names_the_registered_ones(data, tmp_path, capsys):
    code = main(["label", "--data", str(data), *FIELDS, "--model", "no-such-model",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "smollm2-135m" in capsys.readouterr().err


def test_demo_runs_end_to_end_on_the_bundled_data(tmp_path, capsys):
    assert main(["demo", "--model", "tiny", "--out", str(tmp_path / "demo"),
                 "--skip-bench"]) == 0
    printed = capsys.readouterr().out
    assert "| token |" in printed and "| word |" in printed
    agreement = json.loads((tmp_path / "demo" / "span_agreement.json").read_text())
    # The edits must find the human error spans far better than chance (their share).
    for row in agreement.values():
        assert row["pairs"] == 290
        assert row["precision"] > row["human_bad_rate"] + 0.1
    assert (tmp_path / "demo" / "labels-token" / "preview.html").exists()


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "editalign.cli", "label", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--granularity" in result.stdout and "--field" in result.stdout


def test_label_without_a_usable_pair_is_an_error_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "o"
    assert main(["label", "--data", str(empty), "--preset", "default", "--model", "tiny",
                 "--out", str(out)]) == 2
    assert "empty.jsonl: no usable pair: read 0 rows" in capsys.readouterr().err
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "p", "original": "a", "revised": " "}) + "\n")
    assert main(["label", "--data", str(blank), "--model", "tiny", "--out", str(out)]) == 2
    assert "skipped all (1 empty revised)" in capsys.readouterr().err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "a question", "original": "a b", "revised": "a c"})
                   + "\n")
    assert main(["label", "--data", str(one), "--model", "tiny", "--max-length", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no usable pair: 1 pairs in, none labelled" in err
    assert "--max-length (now 2)" in err and "--truncation keep_end" in err
    assert not out.exists()


def test_label_warns_loudly_when_truncation_loses_most_pairs(tmp_path, capsys):
    long_prompt = " ".join(f"word{i}" for i in range(60))
    rows = [{"prompt": long_prompt if i < 3 else "short?", "original": "It is red.",
             "revised": "It is blue."} for i in range(4)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["label", "--data", str(path), "--model", "tiny", "--max-length", "30"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: truncation lost 3 of 4 pairs (75%)" in err
    assert "--max-length (now 30)" in err and "--truncation keep_end" in err
    assert main([*args, "--truncation", "keep_end", "--out", str(tmp_path / "b")]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "stats.json").read_text())["labels"]["kept"] == 4


def test_training_data_gets_the_same_truncation_warning(tmp_path, caplog):
    from editalign.data.arguments import DataArguments
    from editalign.models import load_tokenizer

    long_prompt = " ".join(f"word{i}" for i in range(60))
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": long_prompt if i < 3 else "short?",
                                        "original": "red", "revised": "blue"}) + "\n"
                            for i in range(4)))
    with caplog.at_level("WARNING"):
        train, _ = DataArguments(data=str(path), max_length=30).load(load_tokenizer("tiny"))
    assert len(train) == 1
    assert "truncation lost 3 of 4 pairs" in caplog.text and "--max_length" in caplog.text
    with pytest.raises(ValueError, match="no usable pair"):
        DataArguments(data=str(path), max_length=2).load(load_tokenizer("tiny"))
