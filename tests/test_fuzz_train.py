"""Fuzzed inputs of `editalign train *` data loading, `score` and `eval winrate`.

Rows with wrong types, missing and extra fields, odd Unicode (lone surrogates, control and
combining characters, right-to-left text, NUL) and huge values. The contract: either the
input loads (and what loads is well-formed), or a clear error naming the file, the row and
the field (``DataError``/``ValueError``, exit 2 from the CLI) with nothing half-written.
Bounded (a few dozen examples per property, no shrinking deadline) so the file runs in
seconds; the data-loading function every trainer shares is called directly, and a couple
of end-to-end CLI examples cover the commands.
"""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from editalign.data.arguments import DataArguments
from editalign.data.pairs import DataError
from editalign.models import load_tokenizer

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Text that breaks naive code: lone surrogates, NUL and other controls, combining marks,
# right-to-left and zero-width characters, emoji, and ordinary words.
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
            max_size=3),
    st.sampled_from(["\x00", "\u202e\u05e9\u05dc\u05d5\u05dd", "e\u0301\u0301",
                     "\u200b\ufeff", "\U0001f600" * 5, " ", "\n\t", "x" * 3000]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30),
                                                          max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), odd_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", ""]),
                           "content": odd_text}),
    json_values), max_size=3)
field_value = st.one_of(odd_text, json_values, messages)


@st.composite
def pair_rows(draw: st.DrawFn) -> dict:
    """A pairs row: each of the usual fields present (often plausible) or not, plus noise."""
    row = {}
    for key in ("prompt", "original", "revised"):
        if draw(st.integers(0, 9)) < 8:
            row[key] = draw(st.one_of(st.text(min_size=1, max_size=30), field_value))
    if draw(st.booleans()):
        row["id"] = draw(json_values)
    if draw(st.booleans()):
        row["meta"] = draw(json_values)
    row.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return row


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _write_jsonl(path, rows):
    # Python's json writes NaN/Infinity (and lone surrogates as escapes), as careless
    # producers do: the reader must cope with what such files hold.
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _check_loaded(pairs):
    for lp in pairs:
        for side in (lp.original, lp.revised):
            assert len(side.input_ids) == len(side.labels)
            assert 0 < side.response_start < len(side.input_ids) or side.response_start == 0
            assert len(side.offsets) == len(side.response_ids)
        assert 0 <= lp.edit_ratio < 1
        assert isinstance(lp.id, str)


def _names_where(err: Exception, path) -> None:
    """An error the user can act on: names the file; a row-level one names row and field."""
    message = str(err)
    assert str(path) in message, message
    if isinstance(err, DataError) and err.row is not None:
        assert f"row {err.row}" in message
    assert "Traceback" not in message


@FUZZ
@given(rows=st.lists(pair_rows(), min_size=1, max_size=4), strict=st.booleans())
# Found by this test: an empty chat-message list and a lone surrogate reached the tokenizer
# (ValueError from the chat template, TypeError from tokenizers, no row named).
@example(rows=[{"prompt": "0", "original": "0", "revised": "0"},
               {"prompt": [], "original": "0", "revised": "0"}], strict=False)
@example(rows=[{"prompt": "0", "original": "0", "revised": "\ud800"}], strict=True)
@example(rows=[{"prompt": [{"role": "user", "content": "\udfff"}], "original": "a",
                "revised": "b"}], strict=True)
def test_train_data_loading_loads_or_names_row_and_field(tmp_path_factory, tok, rows, strict):
    path = _write_jsonl(tmp_path_factory.mktemp("fuzz") / "pairs.jsonl", rows)
    args = DataArguments(data=str(path), max_length=64, strict=strict)
    try:
        train, evaluation = args.load(tok)
    except (DataError, ValueError) as err:
        _names_where(err, path)
        if strict and isinstance(err, DataError) and err.row is not None:
            assert err.field is not None or "row" in str(err)
        return
    assert train and evaluation == []
    _check_loaded(train)


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=30), json_values.map(json.dumps)),
                      min_size=1, max_size=4))
def test_train_data_loading_of_arbitrary_lines(tmp_path_factory, tok, lines):
    """Lines that are not JSON objects at all (text, numbers, arrays, broken JSON)."""
    path = tmp_path_factory.mktemp("fuzz") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        train, _ = DataArguments(data=str(path), max_length=64).load(tok)
    except (DataError, ValueError) as err:
        _names_where(err, path)
        return
    _check_loaded(train)


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["prompt", "id", "bench", "x"]),
                                     field_value, max_size=3), min_size=1, max_size=4))
# Found by this test: an empty prompt loaded and then encoded to no tokens at all.
@example(rows=[{"prompt": ""}])
@example(rows=[{"prompt": []}])
@example(rows=[{"prompt": [{"role": "user", "content": 5}]}])
def test_eval_winrate_prompt_rows_load_or_name_row_and_field(tmp_path_factory, tok, rows):
    from editalign.eval.winrate import read_prompt_rows
    from editalign.generation import encode_prompt

    path = _write_jsonl(tmp_path_factory.mktemp("fuzz") / "prompts.jsonl", rows)
    try:
        loaded = read_prompt_rows(path)
    except ValueError as err:
        _names_where(err, path)
        assert "row " in str(err) or "line " in str(err)
        return
    for row in loaded:  # what loads must sample: the prompt renders and tokenizes
        assert encode_prompt(row["prompt"], tok)


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["prompt", "original", "revised", "q"]),
                                     field_value, max_size=3), min_size=1, max_size=4))
def test_ppo_prompt_loading_loads_or_names_row_and_field(tmp_path_factory, tok, rows):
    from editalign.data.labeling import render_prompt
    from editalign.data.pairs import load_prompts

    path = _write_jsonl(tmp_path_factory.mktemp("fuzz") / "prompts.jsonl", rows)
    try:
        prompts = load_prompts(path)
    except (DataError, ValueError) as err:
        _names_where(err, path)
        return
    for prompt in prompts:
        text, _ = render_prompt(prompt, tok, "auto")
        assert isinstance(text, str)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tok):
    from editalign.reward_model import TokenRewardModel

    out = tmp_path_factory.mktemp("rm") / "rm"
    TokenRewardModel.from_backbone("tiny").save_pretrained(out, tokenizer=tok)
    return out


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(pair_rows(), min_size=1, max_size=3))
def test_score_cli_exits_0_or_2_and_writes_nothing_on_error(tmp_path_factory, reward_model_dir,
                                                            rows):
    from editalign.cli import main

    work = tmp_path_factory.mktemp("score")
    path = _write_jsonl(work / "pairs.jsonl", rows)
    out = work / "out"
    code = main(["score", "--reward-model", str(reward_model_dir), "--data", str(path),
                 "--out", str(out), "--max-length", "64"])
    assert code in (0, 2)
    if code == 2:
        assert not out.exists()
    else:
        metrics = json.loads((out / "metrics.json").read_text(),
                             parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
        assert isinstance(metrics, dict)


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(pair_rows(), min_size=1, max_size=3))
def test_train_figa_cli_exits_0_or_2_and_writes_nothing_on_error(tmp_path_factory, rows):
    from editalign.cli import main

    work = tmp_path_factory.mktemp("figa")
    path = _write_jsonl(work / "pairs.jsonl", rows)
    out = work / "out"
    code = main(["train", "figa", "--model", "tiny", "--data", str(path), "--output_dir",
                 str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
                 "--max_length", "64", "--disable_tqdm", "True", "--report_to", "none",
                 "--save_strategy", "no"])
    assert code in (0, 2)
    if code == 2:
        assert not out.exists() or not any(out.iterdir())
    else:
        assert (out / "config.json").is_file()
