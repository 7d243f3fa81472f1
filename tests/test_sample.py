"""``editalign sample``: rows that revise/annotate/label read, k samples, seeds, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editalign.cli import main

PROMPTS = [
    {"id": "a", "prompt": "Name a colour."},
    {"id": "b", "prompt": [{"role": "user", "content": "Count to three."}]},
    {"id": "c", "prompt": "Say hello."},
]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return path


def _run(prompts, out, *extra):
    return main(["sample", "--model", "tiny", "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "6", "--batch-size", "4", "--no-progress", *extra])


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_rows_are_read_by_label_revise_and_annotate_loaders(prompts, tmp_path):
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.pairs import load_pairs
    from editalign.generation import encode_prompt
    from editalign.models import load_tokenizer

    out = tmp_path / "samples.jsonl"
    assert _run(prompts, out, "--num-samples", "2") == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1"]
    for row in rows:
        source = PROMPTS["abc".index(row["id"][0])]
        assert row["prompt"] == source["prompt"]
        assert row["original"] == row["revised"]
        meta = row["meta"]["sample"]
        assert meta["prompt_id"] == source["id"] and meta["sample_index"] == int(row["id"][-1])
        assert meta["model"] == "tiny" and meta["max_new_tokens"] == 6
        assert meta["finish_reason"] in ("stop", "length")
        assert 1 <= meta["response_tokens"] <= 6
    # `revise`, `annotate` and `label` all read files through load_pairs (default preset).
    pairs, report = load_pairs(out)
    assert report.preset == "default" and len(pairs) == 6 and report.no_edit == 6
    # The labeller renders the prompt exactly as the sampler did (same tokens before the
    # response), chat messages included.
    tokenizer = load_tokenizer("tiny")
    labeled, _ = label_pairs(pairs, tokenizer, LabelingConfig(max_length=None))
    for pair, lab in zip(pairs, labeled, strict=True):
        assert lab.original.input_ids[:lab.original.response_start] == \
            encode_prompt(pair.prompt, tokenizer)


def test_k_samples_per_prompt_differ_and_seed_makes_runs_identical(prompts, tmp_path):
    first, second, other = (tmp_path / f"{n}.jsonl" for n in ("first", "second", "other"))
    assert _run(prompts, first, "--num-samples", "3", "--seed", "7") == 0
    assert _run(prompts, second, "--num-samples", "3", "--seed", "7") == 0
    assert _run(prompts, other, "--num-samples", "3", "--seed", "8") == 0
    rows = _rows(first)
    assert len(rows) == 9
    for prompt in "abc":
        texts = [r["original"] for r in rows if r["id"].startswith(prompt + "-")]
        assert len(texts) == 3 and len(set(texts)) == 3  # random tiny model: k distinct draws
    assert first.read_text() == second.read_text()
    assert [r["original"] for r in _rows(other)] != [r["original"] for r in rows]


@pytest.mark.parametrize("cut", ["mid_line", "line_boundary"])
def test_resume_after_truncation_loses_and_duplicates_nothing(prompts, tmp_path, cut, capsys):
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert _run(prompts, full, "--num-samples", "3") == 0
    data = full.read_bytes()
    lines = data.split(b"\n")
    # 5 complete rows (a partial second batch of 4) plus, for mid_line, half of the sixth
    keep = b"\n".join(lines[:5]) + b"\n"
    if cut == "mid_line":
        keep += lines[5][:len(lines[5]) // 2]
    part.write_bytes(keep)
    capsys.readouterr()
    assert _run(prompts, part, "--num-samples", "3") == 0
    assert "5 already in" in capsys.readouterr().out
    # the same rows, once each, in order, with the same samples as the uninterrupted run
    assert part.read_bytes() == data
    ids = [r["id"] for r in _rows(part)]
    assert len(ids) == len(set(ids)) == 9
    # a rerun of a finished file writes nothing
    assert _run(prompts, part, "--num-samples", "3") == 0
    assert part.read_bytes() == data


def test_resume_with_other_settings_or_prompts_is_refused(prompts, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert _run(prompts, out) == 0
    before = out.read_bytes()
    assert _run(prompts, out, "--temperature", "0.5") == 2
    err = capsys.readouterr().err
    assert "temperature=1.0" in err and "temperature=0.5" in err
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "a", "prompt": "Something else."}) + "\n")
    assert _run(other, out) == 2
    assert "another prompt" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_damaged_middle_line_is_an_error_not_a_torn_write(prompts, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert _run(prompts, out) == 0
    lines = out.read_text().splitlines()
    lines[1] = "{not json"
    out.write_text("\n".join(lines) + "\n")
    assert _run(prompts, out) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


def test_vllm_backend_reports_why_it_is_unavailable(prompts, tmp_path, capsys):
    from editalign.sample import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are present")
    assert _run(prompts, tmp_path / "s.jsonl", "--backend", "vllm") == 2
    err = capsys.readouterr().err
    assert "--backend vllm is unavailable" in err and reason in err
    assert not (tmp_path / "s.jsonl").exists()


def test_missing_arguments_and_bad_options(prompts, tmp_path, capsys):
    assert main(["sample", "--model", "tiny", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--prompts required" in capsys.readouterr().err
    assert _run(prompts, tmp_path / "x.jsonl", "--num-samples", "0") == 2
    assert "num_samples must be >= 1" in capsys.readouterr().err


def test_sample_options_share_the_evaluators_checks():
    from editalign.generation import SamplingConfig
    from editalign.sample import SampleOptions

    for bad in ({"top_p": 0}, {"temperature": -1}, {"max_new_tokens": 0}, {"batch_size": 0}):
        for cls in (SampleOptions, SamplingConfig):
            with pytest.raises(ValueError, match=next(iter(bad))):
                cls(**bad)
    with pytest.raises(ValueError, match="num_samples"):
        SampleOptions(samples_per_prompt=2)
    assert SampleOptions().max_new_tokens == 256 and SamplingConfig().max_new_tokens == 128
