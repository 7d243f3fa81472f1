"""`editalign train token-rm|rm` and `editalign score` end to end on the tiny model."""

import json

import pytest

from editalign.cli import main

ROWS = [
    {"prompt": f"Q{i}: colour of the sky?", "original": f"The sky is green, says {i}.",
     "revised": f"The sky is blue, says {i}."} for i in range(12)
]


TRAIN = ["--model", "tiny", "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--use_cpu", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


@pytest.fixture(scope="module")
def token_rm(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "token-rm"
    code = main(["train", "token-rm", "--data", str(pairs), "--eval_size", "4",
                 "--output_dir", str(out), *TRAIN])
    assert code == 0
    return out


def test_train_token_rm_writes_a_loadable_reward_model(token_rm):
    config = json.loads((token_rm / "reward_config.json").read_text())
    assert config["objectives"] == {"token_cls": 1.0}
    assert config["transform"] == "sigmoid" and config["read_at"] == "token"
    metrics = json.loads((token_rm / "eval_results.json").read_text())
    assert {"eval_token_auroc", "eval_pairwise_accuracy_sum"} <= set(metrics)


def test_train_rm_is_a_sequence_reward_model(pairs, tmp_path):
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(f"data: {pairs}\nmodel: tiny\nmax_steps: 1\nuse_cpu: true\n"
                   "report_to: none\nsave_strategy: 'no'\n")
    out = tmp_path / "seq-rm"
    assert main(["train", "rm", "--config", str(cfg), "--output_dir", str(out)]) == 0
    config = json.loads((out / "reward_config.json").read_text())
    assert config["objectives"] == {"seq_bt_last": 1.0}
    assert config["read_at"] == "last" and config["transform"] == "identity"


def test_score_writes_rewards_metrics_and_a_coloured_page(token_rm, pairs, tmp_path, capsys):
    out = tmp_path / "scores"
    assert main(["score", "--reward-model", str(token_rm), "--data", str(pairs),
                 "--out", str(out), "--limit", "3"]) == 0
    lines = [json.loads(x) for x in (out / "rewards.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    original = lines[0]["original"]
    # the tiny tokenizer is byte-level: one token per character, plus the EOS
    assert "".join(original["tokens"][:-1]) == ROWS[0]["original"]
    assert len(original["rewards"]) == len(original["tokens"]) == len(original["labels"])
    assert original["labels"][len("The sky is "):len("The sky is green")].count("equal") < 5
    assert original["score_sum"] == pytest.approx(sum(original["rewards"]), abs=1e-4)
    assert "pairwise_accuracy_sum" in json.loads((out / "metrics.json").read_text())
    page = (out / "index.html").read_text()
    assert page.count("<span class='t") >= len(original["tokens"])
    assert "rgba(" in page and "title='reward " in page
    assert "rewards.jsonl" in capsys.readouterr().out


def test_score_refuses_data_labelled_with_another_tokenizer(token_rm, pairs, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    assert main(["label", "--data", str(pairs), "--model", "tiny", "--out",
                 str(labelled)]) == 0
    stats = json.loads((labelled / "stats.json").read_text())
    stats["tokenizer_fingerprint"] = "0" * 16  # as if another tokenizer had labelled it
    (labelled / "stats.json").write_text(json.dumps(stats))
    code = main(["score", "--reward-model", str(token_rm), "--data", str(labelled),
                 "--out", str(tmp_path / "s")])
    assert code == 2
    assert "differs from this model's tokenizer" in capsys.readouterr().err


def test_same_seed_gives_the_same_reward_model_whatever_ran_before(pairs, tmp_path):
    """The new head is drawn after seeding: two runs with one --seed are identical even when
    the global RNG was disturbed in between, and another --seed gives another head."""
    import torch
    from safetensors.torch import load_file

    def head(name: str, seed: str) -> torch.Tensor:
        out = tmp_path / name
        assert main(["train", "token-rm", "--data", str(pairs), "--output_dir", str(out),
                     "--seed", seed, *TRAIN]) == 0
        return load_file(out / "reward_head.safetensors")["weight"]

    first = head("a", "0")
    torch.rand(1000)  # what an earlier test or import might have done
    assert torch.equal(head("b", "0"), first)
    assert not torch.equal(head("c", "1"), first)


def _copy_with_nan_head(token_rm, tmp_path):
    """The reward model with a NaN head bias: every reward it gives is NaN."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-rm"
    shutil.copytree(token_rm, broken)
    head = load_file(broken / "reward_head.safetensors")
    head["bias"] = torch.full_like(head["bias"], float("nan"))
    save_file(head, broken / "reward_head.safetensors")
    return broken


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_score_refuses_nan_rewards_naming_the_pair_and_writes_nothing(token_rm, pairs,
                                                                      tmp_path, capsys):
    broken = _copy_with_nan_head(token_rm, tmp_path)
    out = tmp_path / "scores"
    code = main(["score", "--reward-model", str(broken), "--data", str(pairs), "--out", str(out),
                 "--limit", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "returned NaN or inf rewards for pair 'default-0' (revised)" in err
    assert not out.exists()


def test_score_writes_strict_json_with_undefined_metrics_as_null(token_rm, tmp_path):
    # Pairs without an edit: no token is deleted or substituted, so the token AUROC (edited
    # vs kept tokens) is undefined: null in the file, never NaN (which is not JSON).
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({**r, "revised": r["original"]}) + "\n" for r in ROWS[:2]))
    out = tmp_path / "scores"
    assert main(["score", "--reward-model", str(token_rm), "--data", str(same),
                 "--out", str(out)]) == 0
    metrics = _strict_json((out / "metrics.json").read_text())
    for line in (out / "rewards.jsonl").read_text().splitlines():
        _strict_json(line)
    assert metrics["token_auroc"] is None


def test_score_names_a_truncated_or_missing_weight_file(token_rm, pairs, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken-rm"
    shutil.copytree(token_rm, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    argv = ["score", "--reward-model", str(broken), "--data", str(pairs), "--out",
            str(tmp_path / "s")]
    assert main(argv) == 2
    assert f"{weights}: unreadable safetensors file" in capsys.readouterr().err
    weights.unlink()
    assert main(argv) == 2
    assert f"{broken}: no weights file" in capsys.readouterr().err
    shutil.copy(token_rm / "model.safetensors", weights)
    (broken / "reward_head.safetensors").unlink()
    assert main(argv) == 2
    assert f"{broken / 'reward_head.safetensors'}: missing" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_reviser_reward_filter_refuses_non_finite_scores_naming_the_row():
    from editalign.revise.filters import reward_filter
    from editalign.reward_model import NonFiniteRewardError

    def scorer(prompts, responses):
        return [float("inf") if r == "bad" else 1.0 for r in responses]

    with pytest.raises(NonFiniteRewardError, match=r"row 'b' \(revised\)"):
        reward_filter(scorer, ["p", "p"], ["x", "y"], ["fine", "bad"], ids=["a", "b"])


def test_train_writes_no_progress_bar_into_a_log_file_unless_asked(tmp_path, monkeypatch):
    import io
    import sys

    import yaml

    from editalign.train.cli import parse_train_args
    from editalign.train.reward import RewardConfig

    def disable_tqdm(*argv: str) -> bool:
        out = tmp_path / f"rm{len(list(tmp_path.iterdir()))}"
        return parse_train_args(RewardConfig, ["--output_dir", str(out), *argv])[2].disable_tqdm

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: a log file
    assert disable_tqdm() is True
    assert disable_tqdm("--disable_tqdm", "False") is False
    config = tmp_path / "bars.yaml"
    config.write_text(yaml.safe_dump({"disable_tqdm": False}))
    assert disable_tqdm("--config", str(config)) is False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not disable_tqdm()  # a terminal keeps transformers' own default (bars)
