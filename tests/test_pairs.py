"""Loading edit pairs: formats, presets, mappings, bad input and the shared real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editalign.data.pairs import (
    PRESETS,
    DataError,
    EditPair,
    LoadReport,
    detect_preset,
    load_pairs,
    parse_field_mapping,
    render_qa_prompt,
    save_pairs_jsonl,
)
from editalign.data.presets import _split_dialogues

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QA_FEEDBACK = SHARED / "qa-feedback" / "feedback.json"
HH_RLHF = SHARED / "hh-rlhf" / "harmless-base-test.jsonl"

ROWS = [
    {"prompt": "Say hi.", "original": "Helo there.", "revised": "Hello there.", "id": "a"},
    {"prompt": "Count.", "original": "1 2 4", "revised": "1 2 3", "id": "b"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def texts(pairs: list[EditPair]) -> list[tuple]:
    return [(p.prompt, p.original, p.revised, p.id) for p in pairs]


EXPECTED = [("Say hi.", "Helo there.", "Hello there.", "a"), ("Count.", "1 2 4", "1 2 3", "b")]


# --------------------------------------------------------------------------- EditPair


def test_edit_pair_round_trips_through_dict_and_json():
    pair = EditPair([{"role": "user", "content": "hi"}], "a", "b", "x", {"k": [1, 2]})
    data = json.loads(json.dumps(pair.to_dict()))
    assert EditPair.from_dict(data) == pair
    assert pair.has_edit
    assert not EditPair("p", "same", "same", "y").has_edit
    data["meta"]["k"].append(3)
    assert pair.meta == {"k": [1, 2]}  # to_dict copies


# --------------------------------------------------------------------------- formats


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n  \n" + json.dumps(ROWS[1]) + "\n",
                    encoding="utf-8")
    pairs, report = load_pairs(path)
    assert texts(pairs) == EXPECTED
    assert (report.preset, report.rows_read, report.kept) == ("default", 2, 2)


@pytest.mark.parametrize("wrap", [lambda rows: rows, lambda rows: {"version": 1, "data": rows}])
def test_json_list_or_single_list_key(tmp_path, wrap):
    pairs, _ = load_pairs(write_json(tmp_path / "pairs.json", wrap(ROWS)))
    assert texts(pairs) == EXPECTED


def test_json_without_one_list_is_an_error(tmp_path):
    path = write_json(tmp_path / "pairs.json", {"a": ROWS, "b": ROWS})
    with pytest.raises(DataError, match=r"one list-valued key.*'a', 'b'"):
        load_pairs(path)


def test_json_file_holding_json_lines_gets_a_hint(tmp_path):
    path = write_jsonl(tmp_path / "pairs.json", ROWS)
    with pytest.raises(DataError, match=r"line 2, column 1: Extra data.*name it \.jsonl"):
        load_pairs(path)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    pairs, _ = load_pairs(path)
    assert texts(pairs) == EXPECTED


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read as Parquet"):
        load_pairs(path)


def test_csv_with_multiline_cells_and_line_numbers(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,original,revised\r\n"two\nlines",a,b\r\nq,,c\r\n', encoding="utf-8")
    pairs, report = load_pairs(path)
    assert texts(pairs) == [("two\nlines", "a", "b", "default-0")]
    assert report.examples["empty original"] == ["row 1 (line 4)"]


def test_csv_row_with_extra_cells_is_an_error(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,original,revised\np,a,b,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 0 \(line 2\): the row has 1 more cells"):
        load_pairs(path)


@pytest.fixture(scope="module")
def dataset_dirs(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("datasets")
    train, test = datasets.Dataset.from_list(ROWS), datasets.Dataset.from_list(ROWS[:1])
    train.save_to_disk(str(root / "single"))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "dict"))
    datasets.DatasetDict({"dev": test, "test": test}).save_to_disk(str(root / "no-train"))
    return root


def test_saved_dataset(dataset_dirs):
    pairs, report = load_pairs(dataset_dirs / "single")
    assert texts(pairs) == EXPECTED
    assert report.split is None
    with pytest.raises(DataError, match="single Dataset"):
        load_pairs(dataset_dirs / "single", split="train")


def test_saved_dataset_dict_splits(dataset_dirs):
    pairs, report = load_pairs(dataset_dirs / "dict")
    assert (len(pairs), report.split) == (2, "train")
    pairs, report = load_pairs(dataset_dirs / "dict", split="test")
    assert (len(pairs), report.split) == (1, "test")
    with pytest.raises(DataError, match=r"no split was given and there is no 'train'.*dev, test"):
        load_pairs(dataset_dirs / "no-train")
    with pytest.raises(DataError, match=r"no split 'val'.*dev, test"):
        load_pairs(dataset_dirs / "no-train", split="val")


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        load_pairs(tmp_path)


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'.*\.jsonl, \.json"):
        load_pairs(path)
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="applies only to a directory"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", ROWS), split="train")


# --------------------------------------------------------------------------- presets


def test_default_preset_keeps_meta_and_makes_ids(tmp_path):
    rows = [{"prompt": "p", "original": "a", "revised": "b", "meta": {"k": 1}},
            {"prompt": "p", "original": "a", "revised": "b", "id": 7}]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "d.jsonl", rows), preset="default")
    assert [(p.id, p.meta) for p in pairs] == [("default-0", {"k": 1}), ("7", {})]


def test_spa_preset(tmp_path):
    rows = [
        {"instruction": "Fix it.", "input": "x = 1", "output": "ref", "original_output": "a",
         "revised_output": "b"},
        {"instruction": "Go.", "input": " ", "original_output": "a", "revised_output": "a"},
    ]
    pairs, report = load_pairs(write_jsonl(tmp_path / "spa.jsonl", rows))
    assert report.preset == "spa"
    assert texts(pairs) == [("Fix it.\n\nx = 1", "a", "b", "spa-0"), ("Go.", "a", "a", "spa-1")]
    assert [p.meta for p in pairs] == [{"reference": "ref"}, {}]
    assert report.no_edit == 1


QA_ROW = {
    "question": "Who?",
    "passages": [["T1", "T1\n\nFirst.", "Second."], ["T2", "Other."]],
    "gold": "gold answer",
    "prediction 1": "Alice did it. Bob.",
    "feedback": {
        "errors": [{"error type": "Irrelevant", "explanation": "", "start": 14, "end": 18}],
        "missing-info": [{"passage_id": 2, "sentence_id": [1]}],
        "corrected-prediction": "Alice did it.",
    },
    "preference": [1, 0, 2, 1, 1, 0],
}


def test_qa_feedback_preset(tmp_path):
    pairs, report = load_pairs(write_json(tmp_path / "qa.json", [QA_ROW]))
    (pair,) = pairs
    assert report.preset == "qa-feedback"
    assert pair.prompt == "Question: Who?\n\nPassages:\n[1] T1: First. Second.\n[2] T2: Other."
    assert (pair.original, pair.revised, pair.id) == ("Alice did it. Bob.", "Alice did it.",
                                                     "qa-feedback-0")
    assert pair.meta == {
        "source": "qa-feedback",
        "error_spans": [{"start": 14, "end": 18, "type": "Irrelevant", "explanation": ""}],
        "missing_info": QA_ROW["feedback"]["missing-info"],
        "gold": "gold answer",
        "preference": [1, 0, 2, 1, 1, 0],
    }
    assert render_qa_prompt("Q?", []) == "Question: Q?"


@pytest.mark.parametrize("span", [{"start": 14, "end": 99}, {"start": 5, "end": 5},
                                  {"start": "0", "end": 3}, "0-3"])
def test_qa_feedback_bad_span(tmp_path, span):
    row = json.loads(json.dumps(QA_ROW))
    row["feedback"]["errors"].append(span)
    with pytest.raises(DataError, match=r"qa\.json: row 0, field 'feedback\.errors\[1\]'"):
        load_pairs(write_json(tmp_path / "qa.json", [row]))


def test_qa_feedback_spans_dropped_when_original_is_remapped(tmp_path):
    row = {**QA_ROW, "prediction 2": "Other text."}
    pairs, report = load_pairs(write_json(tmp_path / "qa.json", [row]), preset="qa-feedback",
                               fields={"original": "prediction 2"})
    assert pairs[0].original == "Other text."
    assert pairs[0].meta["error_spans"] == []
    assert report.fields == {"original": "prediction 2"}


HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Sure, one.",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Sure not."}


def test_preference_splits_hh_dialogues(tmp_path):
    pairs, report = load_pairs(write_jsonl(tmp_path / "hh.jsonl", [HH]))
    (pair,) = pairs
    assert report.preset == "preference"
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    assert (pair.original, pair.revised) == ("Sure not.", "Sure, one.")
    assert pair.meta == {"minimal_edit": False}


@pytest.mark.parametrize(("chosen", "rejected", "expected"), [
    ("Q: what now? Do this.", "Q: what now? Don't.", ("Q: what now?", "Do this.", "Don't.")),
    ("abc", "xyz", ("", "abc", "xyz")),
])
def test_preference_split_without_marker_cuts_at_whitespace(chosen, rejected, expected):
    assert _split_dialogues(chosen, rejected) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\n"), min_size=1), min_size=1,
                max_size=3),
       st.text(st.characters(blacklist_characters="\n")),
       st.text(st.characters(blacklist_characters="\n")))
def test_split_dialogues_recovers_prompt_and_replies(turns, chosen, rejected):
    prompt = "".join(f"\n\nHuman: {t}\n\nAssistant:" for t in turns)
    split = _split_dialogues(f"{prompt} {chosen}", f"{prompt} {rejected}")
    assert split == (prompt, chosen, rejected)


def test_preference_with_prompt_column(tmp_path):
    row = {"prompt": "P", "chosen": "good", "rejected": "bad", "id": "r1"}
    pairs, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert texts(pairs) == [("P", "bad", "good", "r1")]


def test_preference_conversational_without_prompt(tmp_path):
    context = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    row = {"chosen": [*context, {"role": "assistant", "content": "Hello!"}],
           "rejected": [*context, {"role": "assistant", "content": "What."}]}
    pairs, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert texts(pairs) == [(context, "What.", "Hello!", "preference-0")]


def test_preference_conversational_with_prompt(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Hi"}],
           "chosen": [{"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "What."}]}
    pairs, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert pairs[0].prompt == [{"role": "user", "content": "Hi"}]
    assert (pairs[0].original, pairs[0].revised) == ("What.", "Hello!")


@pytest.mark.parametrize(("row", "message"), [
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]},
     "differ before their last assistant message"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "a"}]},
     "last message must be the assistant's reply"),
    ({"chosen": "text", "rejected": [{"role": "assistant", "content": "a"}]},
     "both be text or both be message lists"),
    ({"prompt": "P", "chosen": [{"role": "user", "content": "a"},
                                {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "y"}]},
     "should hold only the assistant's reply"),
])
def test_preference_conversational_errors(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", [row]))


# --------------------------------------------------------------------------- detection, mapping


@pytest.mark.parametrize(("columns", "expected"), [
    (["prompt", "original", "revised"], "default"),
    (["instruction", "input", "output", "original_output", "revised_output"], "spa"),
    (["question", "passages", "prediction 1", "feedback"], "qa-feedback"),
    (["chosen", "rejected"], "preference"),
    (["prompt", "original", "revised", "chosen", "rejected"], "default"),
    (["text", "label"], None),
])
def test_detect_preset(columns, expected):
    assert detect_preset(columns) == expected


def test_undetectable_layout_lists_columns_and_suggests_options(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(DataError, match=r"'text', 'label'.*--preset.*--field"):
        load_pairs(path)


def test_unknown_preset_and_unmappable_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*default, spa"):
        load_pairs(path, preset="nope")
    with pytest.raises(ValueError, match="preset 'spa' cannot map chosen"):
        load_pairs(path, preset="spa", fields={"chosen": "x"})
    assert set(PRESETS) == {"default", "spa", "qa-feedback", "preference", "mlqe-pe"}


def test_dotted_field_mapping(tmp_path):
    rows = [{"question": "Q", "pred": "old", "feedback": {"fixed": "new"}, "uid": "u1"}]
    fields = {"prompt": "question", "original": "pred", "revised": "feedback.fixed",
              "id": "uid"}
    pairs, report = load_pairs(write_jsonl(tmp_path / "m.jsonl", rows), fields=fields)
    assert texts(pairs) == [("Q", "old", "new", "u1")]
    assert report.preset == "default"
    assert "fields prompt=question original=pred" in report.summary()


def test_literal_dotted_csv_header_wins(tmp_path):
    path = tmp_path / "flat.csv"
    path.write_text("question,pred,feedback.fixed\nQ,old,new\n", encoding="utf-8")
    fields = {"prompt": "question", "original": "pred", "revised": "feedback.fixed"}
    pairs, _ = load_pairs(path, fields=fields)
    assert texts(pairs) == [("Q", "old", "new", "default-0")]


def test_mapping_overrides_one_field_of_a_preset(tmp_path):
    rows = [{"instruction": "I", "original_output": "a", "revised_output": "b", "fix": "c"}]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "s.jsonl", rows), preset="spa",
                          fields={"revised": "fix"})
    assert texts(pairs) == [("I", "a", "c", "spa-0")]


def test_mapping_with_chosen_selects_preference(tmp_path):
    rows = [{"q": "P", "good": "yes", "bad": "no"}]
    pairs, report = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows),
                               fields={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert report.preset == "preference"
    assert texts(pairs) == [("P", "no", "yes", "preference-0")]


def test_parse_field_mapping():
    assert parse_field_mapping(["prompt=question", "revised = feedback.fixed",
                                "original=prediction 1"]) == {
        "prompt": "question", "revised": "feedback.fixed", "original": "prediction 1"}


@pytest.mark.parametrize(("items", "message"), [
    (["prompt"], r"bad --field 'prompt': expected KEY=COLUMN"),
    (["prompt="], r"bad --field 'prompt=': expected KEY=COLUMN"),
    (["answer=x"], r"bad --field 'answer=x': unknown key 'answer'; allowed: prompt"),
    (["id=a", "id=b"], r"bad --field 'id=b': 'id' is already mapped to 'a'"),
    (["original=a", "chosen=b"], "cannot mix original/revised with chosen/rejected"),
])
def test_parse_field_mapping_errors(items, message):
    with pytest.raises(ValueError, match=message):
        parse_field_mapping(items)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("value", "got"), [(3, "int 3"), (["a"], r"list \['a'\]"),
                                            (None, "null")])
def test_wrong_type_names_file_line_and_field(tmp_path, value, got):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], "original": value}])
    with pytest.raises(DataError, match=rf"bad\.jsonl: row 1 \(line 2\), field 'original': "
                                        rf"expected text \(a string\), got {got}") as info:
        load_pairs(path)
    assert (info.value.row, info.value.line, info.value.field) == (1, 2, "original")


def test_row_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], ["a", "b"]])
    with pytest.raises(DataError, match=r"row 1 \(line 2\): expected an object.*got list"):
        load_pairs(path, preset="default")


def test_missing_field_lists_the_fields_present(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "original": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"row 0 \(line 1\), field 'revised': missing field "
                                        r"'revised'; this row has fields: 'prompt', 'original', "
                                        r"'answer'"):
        load_pairs(path, preset="default")


def test_missing_nested_field_lists_nested_keys(tmp_path):
    rows = [{"q": "Q", "pred": "a", "feedback": {"fix": "b"}}]
    fields = {"prompt": "q", "original": "pred", "revised": "feedback.fixed"}
    with pytest.raises(DataError, match=r"'feedback\.fixed' \(the revised\).*'feedback' has: "
                                        r"'fix'"):
        load_pairs(write_jsonl(tmp_path / "m.jsonl", rows), fields=fields)


def test_empty_responses_are_skipped_and_counted(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "original": "  "}, {**ROWS[1], "revised": ""},
            {**ROWS[1], "revised": "\n"}]
    pairs, report = load_pairs(write_jsonl(tmp_path / "e.jsonl", rows))
    assert [p.id for p in pairs] == ["a"]
    assert report.skipped == {"empty original": 1, "empty revised": 2}
    assert report.examples["empty revised"] == ["row 2 (line 3)", "row 3 (line 4)"]
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'original': empty original"):
        load_pairs(tmp_path / "e.jsonl", strict=True)


def test_strict_error_names_the_preference_column(tmp_path):
    rows = [{"prompt": "P", "chosen": " ", "rejected": "no"}]
    with pytest.raises(DataError, match="field 'chosen': empty revised"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), strict=True)


def test_identical_original_and_revised_is_kept_as_no_edit(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "revised": ROWS[1]["original"]}]
    pairs, report = load_pairs(write_jsonl(tmp_path / "n.jsonl", rows))
    assert [p.has_edit for p in pairs] == [True, False]
    assert (report.kept, report.no_edit, report.examples["no edit"]) == (2, 1, ["row 1 (line 2)"])


@pytest.mark.parametrize(("suffix", "data", "byte"), [
    (".jsonl", b'{"prompt": "p", "original": "a", "revised": "b"}\n{"original": "caf\xe9"}\n', 18),
    (".json", b'[{"prompt": "p",\n "original": "caf\xe9", "revised": "x"}]', 18),
    (".csv", b'prompt,original,revised\np,"rev. caf\xe9",x\n', 12),
])
def test_undecodable_bytes(tmp_path, suffix, data, byte):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"latin1\{suffix}: not valid UTF-8 at line 2, byte {byte} "):
        load_pairs(path)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{oops}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: row 1 \(line 3\): malformed JSON at "
                                        r"column 2: Expecting property name"):
        load_pairs(path)


@pytest.mark.parametrize(("prompt", "field"), [
    ([{"role": "user"}], "prompt[0]"),
    ([{"role": "user", "content": "a"}, "text"], "prompt[1]"),
    ([{"role": 1, "content": "a"}], "prompt[0]"),
    ({"role": "user", "content": "a"}, "prompt"),
])
def test_malformed_chat_prompt(tmp_path, prompt, field):
    path = write_jsonl(tmp_path / "c.jsonl", [{**ROWS[0], "prompt": prompt}])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert info.value.field == field and "row 0 (line 1)" in str(info.value)


def test_bad_id_and_meta(tmp_path):
    with pytest.raises(DataError, match="field 'id': expected an id"):
        load_pairs(write_jsonl(tmp_path / "i.jsonl", [{**ROWS[0], "id": [1]}]))
    with pytest.raises(DataError, match="field 'meta': expected an object"):
        load_pairs(write_jsonl(tmp_path / "m.jsonl", [{**ROWS[0], "meta": "x"}]))


def test_empty_file_cannot_be_detected_but_loads_with_a_preset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        load_pairs(path)
    assert load_pairs(path, preset="default")[0] == []


# --------------------------------------------------------------------------- limit, report, save


def test_limit_counts_rows_read(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "revised": ""}, *ROWS]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    pairs, report = load_pairs(path, limit=2)
    assert (len(pairs), report.rows_read, report.skipped.total()) == (1, 2, 1)
    assert load_pairs(path, limit=0)[0] == []
    with pytest.raises(ValueError, match="limit"):
        load_pairs(path, limit=-1)


def test_report_summary_and_dict(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "revised": ""}, {**ROWS[1], "revised": ROWS[1]["original"]}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    _, report = load_pairs(path)
    assert report.summary() == (
        f"{path}: preset 'default'\n"
        "read 3 rows, kept 2 pairs (1 with no edit), skipped 1\n"
        "  empty revised: 1 (e.g. row 1 (line 2))")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["skipped"] == {"empty revised": 1} and data["kept"] == 2
    assert LoadReport("s", "default").summary().endswith("skipped 0")


def test_save_and_load_round_trip(tmp_path):
    pairs = [EditPair("Prompt ü", "a\nb", "a\nc", "x1", {"error_spans": [], "n": 1.5}),
             EditPair([{"role": "user", "content": "hi"}], "same", "same", "x2")]
    path = save_pairs_jsonl(pairs, tmp_path / "out" / "pairs.jsonl")
    loaded, report = load_pairs(path)
    assert loaded == pairs
    assert (report.preset, report.no_edit) == ("default", 1)


def test_save_replaces_the_file_whole(tmp_path):
    # Another process may be reading the file (parallel bench seeds): a failed write keeps
    # the old file, and nothing half-written is left beside it.
    path = save_pairs_jsonl([EditPair("p", "a", "b", "x1")], tmp_path / "pairs.jsonl")

    def broken():
        yield EditPair("p", "c", "d", "x2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pairs_jsonl(broken(), path)
    assert [p.id for p in load_pairs(path)[0]] == ["x1"]
    assert [f.name for f in tmp_path.iterdir()] == ["pairs.jsonl"]


# --------------------------------------------------------------------------- shared real data


@pytest.mark.skipif(not QA_FEEDBACK.exists(), reason="shared data not present")
def test_real_qa_feedback():
    pairs, report = load_pairs(QA_FEEDBACK)
    assert (report.preset, report.rows_read) == ("qa-feedback", 300)
    # Ten annotators deleted the whole answer: an empty revised text is skipped.
    assert report.skipped == {"empty revised": 10}
    assert (report.kept, report.no_edit) == (290, 3)
    assert all(p.prompt.startswith("Question: ") and "\n\nPassages:\n[1] " in p.prompt
               for p in pairs if p.id != "qa-feedback-181")  # row 181 has no passages
    assert sum(len(p.meta["error_spans"]) for p in pairs) > 700
    for pair in pairs:
        assert all(0 <= s["start"] < s["end"] <= len(pair.original)
                   for s in pair.meta["error_spans"])
    with pytest.raises(DataError, match=r"feedback\.json: row 5, field 'feedback\.corrected"):
        load_pairs(QA_FEEDBACK, strict=True)


@pytest.mark.skipif(not HH_RLHF.exists(), reason="shared data not present")
def test_real_hh_rlhf():
    pairs, report = load_pairs(HH_RLHF)
    assert (report.preset, report.rows_read) == ("preference", 1500)
    # Four rows have an empty chosen reply (the dialogue ends at "Assistant:").
    assert report.skipped == {"empty revised": 4} and report.kept == 1496
    assert all(p.prompt.strip() and p.prompt.endswith("Assistant:") for p in pairs)
    assert all(p.meta == {"minimal_edit": False} for p in pairs)
    assert all(p.original.strip() and not p.original.startswith(" ") for p in pairs)


def test_gzip_compressed_files(tmp_path):
    import gzip

    rows = [{"prompt": "p", "original": "a b", "revised": "a c"}]
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs, report = load_pairs(path)
    assert [p.revised for p in pairs] == ["a c"] and report.kept == 1
    bad = tmp_path / "bad.json.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b'[{"prompt": "p", "original": "x", "revised": 1}]')
    with pytest.raises(DataError, match=r"row 0.*revised"):
        load_pairs(bad)


def test_load_prompts_from_prompt_rows_and_from_pairs(tmp_path):
    from editalign.data.pairs import load_prompts

    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "a"}) + "\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "b"}]}) + "\n")
    assert load_prompts(rows) == ["a", [{"role": "user", "content": "b"}]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"q": "x", "original": "o", "revised": "r"}) + "\n")
    assert load_prompts(pairs, field="q") == ["x"]
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": "p", "original": "o", "revised": "r"}) + "\n")
    assert load_prompts(edits, limit=1) == ["p"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(DataError, match=r"row 0 \(line 1\), field 'prompt'"):
        load_prompts(bad)


def test_unpaired_surrogates_and_deep_nesting_are_errors_naming_row_and_field(tmp_path):
    # JSON may escape an unpaired surrogate; no tokenizer, request or UTF-8 file can take it.
    path = tmp_path / "sur.jsonl"
    rows = [{"prompt": "p", "original": "a", "revised": "b"},
            {"prompt": [{"role": "user", "content": "q\ud800"}], "original": "a", "revised": "b"},
            {"prompt": "p", "original": "a", "revised": "b", "meta": {"note": "\udfff"}}]
    for i in (1, 2):
        path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[i]) + "\n")
        with pytest.raises(DataError, match="unpaired surrogate") as err:
            load_pairs(path)
        assert err.value.row == 1 and err.value.line == 2
        assert err.value.field == ("prompt[0].content" if i == 1 else "meta.note")
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match="nested too deeply"):
        load_pairs(deep)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        load_pairs(tmp_path / "deep.json")


def test_nan_to_none_makes_strict_json():
    import json
    import math

    from editalign.data.jsonl import nan_to_none

    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -math.inf}], "d": (2, "x"),
             "e": 0.5}
    clean = nan_to_none(value)
    assert clean == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": 0.5}
    json.dumps(clean, allow_nan=False)  # would raise on any NaN left
    with pytest.raises(ValueError):
        json.dumps(value, allow_nan=False)
