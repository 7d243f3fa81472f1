"""PPO with a DPO policy's implicit token reward (RTO): the reward source and the bench arm."""

import json
from pathlib import Path

import pytest
import torch

from editalign.models import load_model, load_tokenizer
from editalign.outputs import OutputError
from editalign.train.ppo_rollout import dpo_reward_source


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_dpo_reward_source_is_beta_times_the_log_ratio_per_token(tok):
    """Against log-ratios computed by hand: each row alone, unpadded, its own forward pass."""
    dpo, ref = load_model("tiny:1").eval(), load_model("tiny:0").eval()
    rows = [(tok("Q: abc", add_special_tokens=False)["input_ids"], list(b"xyz!")),
            (tok("Question: d", add_special_tokens=False)["input_ids"], list(b"hi"))]
    pad = tok.pad_token_id
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, r) in enumerate(rows):  # right padded: prompt, response, padding
        input_ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, :len(p) + len(r)] = 1
    start = torch.tensor([len(p) for p, _ in rows])
    beta = 0.3
    rewards = dpo_reward_source(dpo, ref, beta)(input_ids, attention_mask, start)
    assert rewards.shape == (2, 4)
    for i, (p, r) in enumerate(rows):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp_dpo = torch.log_softmax(dpo(ids).logits[0].double(), -1)
            lp_ref = torch.log_softmax(ref(ids).logits[0].double(), -1)
        for j, token in enumerate(r):
            at = len(p) + j - 1  # the position that predicts response token j
            expected = beta * (lp_dpo[at, token] - lp_ref[at, token])
            assert rewards[i, j].item() == pytest.approx(expected.item(), abs=1e-5)
        assert torch.all(rewards[i, len(r):] == 0)  # padding gets no reward
    # The same model on both sides: zero everywhere (a DPO policy that never moved).
    same = dpo_reward_source(ref, ref, beta)(input_ids, attention_mask, start)
    assert torch.all(same == 0)
    # Summed over the response it is DPO's implicit sequence reward β·log π/π_ref.
    ids = torch.tensor([rows[1][0] + rows[1][1]])
    with torch.no_grad():
        seq = sum(beta * (torch.log_softmax(m(ids).logits[0].double(), -1)[len(rows[1][0]) + j - 1,
                                                                         t]
                          * sign) for m, sign in ((dpo, 1), (ref, -1))
                  for j, t in enumerate(rows[1][1]))
    assert rewards[1].sum().item() == pytest.approx(seq.item(), abs=1e-5)


def test_cli_trains_ppo_with_a_dpo_policy_as_reward(tmp_path, tok, capsys):
    from editalign.cli import main

    dpo_dir = tmp_path / "dpo"
    load_model("tiny:1").save_pretrained(dpo_dir)
    tok.save_pretrained(dpo_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Q{i}:"}) for i in range(6)) + "\n")
    out = tmp_path / "out"
    assert main(["train", "ppo", "--model", "tiny", "--reward_model", str(dpo_dir),
                 "--reward", "dpo", "--dpo_beta", "0.3", "--prompts", str(prompts),
                 "--output_dir", str(out), "--num_iterations", "2",
                 "--rollout_batch_size", "4", "--per_device_train_batch_size", "2",
                 "--max_new_tokens", "6", "--use_cpu", "--report_to", "none",
                 "--save_strategy", "no"]) == 0
    log = [json.loads(line) for line in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in log] == [0, 1]
    assert log[0]["reward"] != 0.0  # tiny:1 and tiny:0 disagree on every token
    # A DPO "policy" with another tokenizer is refused before training.
    other = tmp_path / "other"
    load_model("tiny-bench").save_pretrained(other)
    load_tokenizer("tiny-bench").save_pretrained(other)
    assert main(["train", "ppo", "--model", "tiny", "--reward_model", str(other),
                 "--reward", "dpo", "--prompts", str(prompts), "--output_dir",
                 str(tmp_path / "x"), "--num_iterations", "1", "--use_cpu",
                 "--report_to", "none"]) == 2
    assert "has another tokenizer than --model" in capsys.readouterr().err
    assert not (tmp_path / "x" / "ppo_log.jsonl").exists()


def test_bench_ppo_dpo_arm_reads_the_runs_dpo_policy_with_its_beta(tmp_path, monkeypatch):
    from editalign.bench import runner
    from editalign.bench.results import TRAIN_DONE

    calls: list[tuple[str, list[str]]] = []

    def fake_train(trainer, argv):
        calls.append((trainer, argv))
        Path(argv[argv.index("--output_dir") + 1]).mkdir(parents=True, exist_ok=True)
        return 0.0

    monkeypatch.setattr(runner, "_train", fake_train)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "prompts.train.jsonl").write_text("")
    out = tmp_path / "out"

    def value(argv, flag):
        return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]

    runner.train_method("ppo-dpo", tmp_path / "bench", tmp_path / "pairs.jsonl", out,
                        runner.RunConfig())
    (dpo, dpo_argv), (ppo, ppo_argv) = calls
    assert (dpo, ppo) == ("dpo", "ppo")
    assert value(dpo_argv, "--output_dir") == str(out / "dpo")
    assert value(ppo_argv, "--reward") == "dpo"
    assert value(ppo_argv, "--reward_model") == str(out / "dpo")
    assert value(ppo_argv, "--dpo_beta") == value(dpo_argv, "--beta") == "0.3"  # tuned β
    # The same PPO settings as the other PPO arms (every flag but the reward's).
    calls.clear()
    runner.train_method("ppo-token", tmp_path / "bench", tmp_path / "pairs.jsonl",
                        tmp_path / "out2", runner.RunConfig())
    token_ppo = calls[-1][1]

    def ppo_settings(argv):
        skip = {"--reward", "--reward_model", "--dpo_beta", "--output_dir", "--prompts"}
        return [(a, b) for a, b in zip(argv[::2], argv[1::2], strict=False) if a not in skip]

    assert ppo_settings(ppo_argv) == ppo_settings(token_ppo)
    # A finished dpo arm is reused, not retrained, under the same settings; under others
    # (a β that PPO would read the old policy with) it is refused, never mislabelled.
    calls.clear()
    assert (out / "dpo" / TRAIN_DONE).is_file()
    (out / "ppo-dpo" / TRAIN_DONE).unlink()
    runner.train_method("ppo-dpo", tmp_path / "bench", tmp_path / "pairs.jsonl", out,
                        runner.RunConfig())
    [(ppo, argv)] = calls
    assert ppo == "ppo" and value(argv, "--dpo_beta") == "0.3"
    (out / "ppo-dpo" / TRAIN_DONE).unlink()
    with pytest.raises(OutputError, match=r"extra\.dpo=null then"):
        runner.train_method("ppo-dpo", tmp_path / "bench", tmp_path / "pairs.jsonl", out,
                            runner.RunConfig(extra={"dpo": ["--beta", "0.5"]}))
    # A β given to dpo reaches the reward.
    calls.clear()
    runner.train_method("ppo-dpo", tmp_path / "bench", tmp_path / "pairs.jsonl",
                        tmp_path / "out3", runner.RunConfig(extra={"dpo": ["--beta", "0.5"]}))
    assert [c for c, _ in calls] == ["dpo", "ppo"] and value(calls[-1][1], "--dpo_beta") == "0.5"
