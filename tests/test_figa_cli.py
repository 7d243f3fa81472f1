"""`editalign train figa`: flags, --config files, labelled directories, LoRA, TensorBoard."""

import json

import pytest
import torch

from editalign.cli import main

ROWS = [{"id": str(i), "prompt": f"Q{i}: colour of item {i}?",
         "original": f"Item {i} is red, I think.", "revised": f"Item {i} is blue."}
        for i in range(6)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def common(out):
    return ["--model", "tiny", "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--disable_tqdm", "True"]


def test_config_file_labelled_dir_lora_and_tensorboard(data, tmp_path):
    labelled = tmp_path / "labelled"
    assert main(["label", "--data", str(data), "--model", "tiny", "--out", str(labelled)]) == 0
    cfg = tmp_path / "figa.yaml"
    cfg.write_text("beta: 0.25\ngate: band\ntau: 0.4\nlora_r: 4\nlogging_steps: 1\n")
    out = tmp_path / "run"
    code = main(["train", "figa", "--config", str(cfg), "--data", str(labelled), *common(out),
                 "--tau", "0.7", "--report_to", "tensorboard", "--lora_target_modules",
                 "q_proj", "v_proj", "--gradient_checkpointing", "True"])
    assert code == 0
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert (args.beta, args.gate, args.tau) == (0.25, "band", 0.7)  # the flag beats the file
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert list(out.glob("runs/*/events.out.tfevents.*"))


def test_a_lora_policy_trains_again_from_its_merged_self(data, tmp_path, monkeypatch):
    """Round 2 of a LoRA loop starts from round 1's policy: the saved adapter is loaded as its
    base with the adapter merged in, and the new adapter records round 1 as its base (before,
    the new adapter re-initialised the old one under the same name and round 1 was lost)."""
    from editalign.models import load_model

    lora = ["--lora_r", "4", "--use_cpu", "True", "--report_to", "none",
            "--save_strategy", "no"]
    first, second = tmp_path / "round1", tmp_path / "round2"
    assert main(["train", "figa", "--data", str(data), *common(first), *lora,
                 "--learning_rate", "0.05", "--gamma", "1.0"]) == 0
    # lr 0: round 2's adapter stays zero (LoRA B starts at 0), so round 2 == round 1
    monkeypatch.chdir(tmp_path)  # relative paths in, an absolute base recorded
    assert main(["train", "figa", "--data", str(data), *common("round2"), "--model",
                 "round1", *lora, "--learning_rate", "0.0"]) == 0
    base = json.loads((second / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(first)
    tiny, one, two = (load_model(str(p)).state_dict() for p in ("tiny", first, second))
    assert max((one[k] - tiny[k]).abs().max().item() for k in tiny) > 1e-4  # round 1 learned
    assert all(torch.allclose(two[k], one[k], atol=1e-6) for k in one)


def test_unknown_option_value_is_refused_with_the_allowed_values(data, tmp_path, capsys):
    code = main(["train", "figa", "--data", str(data), *common(tmp_path), "--gate", "lt"])
    assert code == 2
    assert "unknown gate 'lt'; allowed: le, band, none" in capsys.readouterr().err


def test_pairs_whose_response_vanishes_are_skipped_with_the_reason(tmp_path, caplog):
    rows = [{**r, "prompt": r["prompt"] + " Please answer." * i} for i, r in enumerate(ROWS)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # Prompts grow by 15 bytes per row: with 64 tokens the last rows keep no response.
    with caplog.at_level("INFO"):
        code = main(["train", "figa", "--data", str(path), *common(tmp_path / "run"),
                     "--max_steps", "1", "--max_length", "64"])
    assert code == 0
    assert "response truncated away" in caplog.text
    assert "labelled 3 of 6 pairs" in caplog.text


def test_resume_from_last_skips_an_incomplete_newest_checkpoint(data, tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["train", "figa", "--data", str(data), *common(out), "--save_strategy", "steps",
            "--save_steps", "1", "--logging_steps", "1"]
    assert main(argv) == 0
    # A crash while checkpoint-2 was written: the weights are cut short (trainer_state.json,
    # written last, is there only because the crash hit a copy; the weights check finds it).
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level("WARNING"):
        assert main([*argv, "--max_steps", "3", "--resume_from_checkpoint", "last"]) == 0
    assert f"skipping incomplete checkpoint {out / 'checkpoint-2'}" in caplog.text
    assert "model.safetensors: unreadable safetensors file" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3]  # resumed after step 1: steps 2 and 3 trained again


def test_resume_from_a_half_written_checkpoint_names_the_file(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "figa", "--data", str(data), *common(out), "--max_steps", "1",
                 "--save_strategy", "steps", "--save_steps", "1"]) == 0
    (out / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1, ')
    code = main(["train", "figa", "--data", str(data), *common(out), "--resume_from_checkpoint",
                 str(out / "checkpoint-1")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-1' / 'trainer_state.json'}: not valid JSON" in err


@pytest.mark.parametrize("method", ["figa", "sft", "dpo", "token-rm", "rm"])
@pytest.mark.parametrize("max_steps", ["0", "-3"])
def test_max_steps_zero_or_below_minus_one_is_refused(data, tmp_path, capsys, method, max_steps):
    code = main(["train", method, "--data", str(data), *common(tmp_path / "run"),
                 "--max_steps", max_steps])
    assert code == 2
    assert f"--max_steps must be a positive number of optimizer steps, or -1 to train by " \
           f"--num_train_epochs; got {max_steps}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_labelling_options_that_a_labelled_dir_would_ignore_are_refused(data, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    assert main(["label", "--data", str(data), "--model", "tiny", "--out", str(labelled)]) == 0
    capsys.readouterr()
    base = ["train", "figa", "--data", str(labelled), *common(tmp_path / "run")]
    assert main([*base, "--granularity", "word"]) == 2
    err = capsys.readouterr().err
    assert "--granularity word (labelled with token)" in err and "would be ignored" in err
    cfg = tmp_path / "word.yaml"
    cfg.write_text("granularity: word\ntruncation: keep_end\n")
    assert main([*base, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "--granularity word" in err and "--truncation keep_end" in err
    assert main(["train", "token-rm", "--data", str(labelled), *common(tmp_path / "rm"),
                 "--field", "prompt=question"]) == 2
    assert "--field (applies to raw pairs only)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "rm").exists()
