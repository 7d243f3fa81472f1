"""SFT and DPO baselines: TRL's own trainers on FIGA's exact token ids, behind the same CLI."""

import json

import pytest

from editalign.cli import main
from editalign.data.align import IGNORE
from editalign.data.labeling import label_pairs
from editalign.data.pairs import EditPair
from editalign.models import load_tokenizer
from editalign.train.baselines import dpo_dataset, sft_dataset


@pytest.fixture(scope="module")
def pairs():
    tok = load_tokenizer("tiny")
    edits = [EditPair(prompt=f"Q{i}: colour of item {i}?", original=f"Item {i} is red, I think.",
                      revised=f"Item {i} is blue.", id=str(i)) for i in range(6)]
    return label_pairs(edits, tok)[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": str(i), "prompt": f"Q{i}: colour of item {i}?",
             "original": f"Item {i} is red, I think.", "revised": f"Item {i} is blue."}
            for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_sft_dataset_is_the_revised_side_with_loss_on_the_response_only(pairs):
    ds = sft_dataset(pairs)
    for row, lp in zip(ds, pairs, strict=True):
        assert row["input_ids"] == lp.revised.input_ids
        start = lp.revised.response_start
        assert row["labels"][:start] == [IGNORE] * start
        assert row["labels"][start:] == lp.revised.input_ids[start:]  # EOS included


def test_dpo_dataset_prefers_revised_and_shares_the_prompt(pairs):
    ds = dpo_dataset(pairs)
    tok = load_tokenizer("tiny")
    for row, lp in zip(ds, pairs, strict=True):
        assert row["prompt_ids"] + row["chosen_ids"] == lp.revised.input_ids
        assert row["prompt_ids"] + row["rejected_ids"] == lp.original.input_ids
        assert row["chosen_ids"][-1] == row["rejected_ids"][-1] == tok.eos_token_id
        assert len(row["prompt_ids"]) == lp.revised.response_start


def test_cli_lists_the_three_methods(capsys):
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {m} " in out for m in ("figa", "sft", "dpo"))


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_cli_trains_and_saves(method, data, tmp_path):
    out = tmp_path / method
    code = main(["train", method, "--model", "tiny", "--data", str(data), "--output_dir",
                 str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                 "--report_to", "none", "--eval_size", "2", "--max_length", "64",
                 "--gradient_checkpointing", "False", "--disable_tqdm", "True"])
    assert code == 0
    assert (out / "model.safetensors").is_file()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert "eval_loss" in metrics
    if method == "dpo":  # DPO's own metrics: it really ran TRL's DPO loss
        assert "eval_rewards/margins" in metrics
    train = json.loads((out / "train_results.json").read_text())
    assert train["train_loss"] > 0
