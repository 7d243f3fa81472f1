import copy
import statistics

import pytest
import torch

from editalign.models import load_model, load_tokenizer
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.train.ppo import PPOConfig, PPOTrainer
from editalign.train.ppo_rollout import gather_response, response_lengths, text_reward_source

LOWERCASE = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]  # tiny's token id == byte value


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def planted_dense(input_ids, attention_mask, response_start):
    """+1 for every lowercase letter the policy writes: a planted per-token objective."""
    lengths = attention_mask.sum(-1) - response_start
    width = int(lengths.max())
    tokens = gather_response(input_ids, response_start, width)
    good = torch.isin(tokens, torch.tensor(LOWERCASE))
    return (good & (torch.arange(width)[None] < lengths[:, None])).float()


def planted_sparse(input_ids, attention_mask, response_start):
    """The same rewards summed onto the last response token: what a sequence RM sees."""
    dense = planted_dense(input_ids, attention_mask, response_start)
    lengths = attention_mask.sum(-1) - response_start
    out = torch.zeros_like(dense)
    out[torch.arange(len(lengths)), lengths - 1] = dense.sum(-1)
    return out


def make_trainer(tmp_path, tok, reward, *, seed=0, lora=False, **overrides):
    settings = dict(output_dir=str(tmp_path / "ppo"), use_cpu=True, seed=seed,
                    num_iterations=4, rollout_batch_size=8, per_device_train_batch_size=4,
                    max_new_tokens=8, learning_rate=1e-3, kl_coef=0.01, report_to=[],
                    save_strategy="no", disable_tqdm=True)
    settings.update(overrides)
    config = PPOConfig(**settings)
    torch.manual_seed(seed)
    policy = load_model(f"tiny:{seed}")
    ref = None if lora else load_model(f"tiny:{seed}")
    if lora:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=4, target_modules="all-linear"))
    value = TokenRewardModel.from_backbone(f"tiny:{seed}", RewardModelConfig(transform="identity"))
    prompts = [f"Question {i}:" for i in range(16)]
    return PPOTrainer(config, policy, value, tok, reward, prompts, ref_model=ref)


def test_response_lengths_when_pad_is_eos():
    # generate() pads finished rows with pad == eos (2): only the first EOS ends a response.
    responses = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    lengths, hit_max = response_lengths(responses, eos_token_id=2)
    assert lengths.tolist() == [2, 4, 1]
    assert hit_max.tolist() == [False, True, False]


def test_rollout_layout_is_prompt_then_response_then_padding(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, planted_dense)
    prompts = trainer._next_prompts()
    rollout = trainer.rollout(prompts)
    for row, prompt in enumerate(prompts):
        start = int(rollout.response_start[row])
        n = int(rollout.response_mask[row].sum())
        assert rollout.input_ids[row, :start].tolist() == prompt
        assert int(rollout.attention_mask[row].sum()) == start + n
        response = rollout.input_ids[row, start:start + n].tolist()
        assert tok.eos_token_id not in response[:-1]  # at most one EOS, at the end
        assert (response[-1] == tok.eos_token_id) != bool(rollout.hit_max_length[row])


def test_rollout_with_pad_equal_to_eos_keeps_one_eos(tmp_path, tok):
    tok = copy.deepcopy(tok)
    tok.pad_token = tok.eos_token
    trainer = make_trainer(tmp_path, tok, planted_dense, max_new_tokens=24, temperature=3.0)
    rollout = trainer.rollout(trainer._next_prompts())
    for row in range(rollout.input_ids.shape[0]):
        start, n = int(rollout.response_start[row]), int(rollout.response_mask[row].sum())
        response = rollout.input_ids[row, start:start + n].tolist()
        assert response.count(tok.eos_token_id) <= 1


def test_scoring_places_rewards_and_reads_the_reference(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, planted_sparse)
    rollout = trainer.score(trainer.rollout(trainer._next_prompts()))
    mask = rollout.response_mask
    # sparse: only the last response token of each row carries reward
    nonzero_cols = [set(torch.nonzero(r).flatten().tolist()) for r in rollout.rewards]
    for cols, n in zip(nonzero_cols, mask.sum(-1).tolist(), strict=True):
        assert cols <= {n - 1}
    # before any update the policy is the reference: KL is exactly zero
    torch.testing.assert_close(rollout.logprobs * mask, rollout.ref_logprobs * mask)


def test_lora_policy_uses_itself_without_adapter_as_reference(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, planted_dense, lora=True, num_iterations=2,
                           learning_rate=5e-2)
    trainer.train()
    rollout = trainer.score(trainer.rollout(trainer._next_prompts()))
    base = load_model("tiny:0")
    from editalign.train.ppo_rollout import policy_logprobs

    with torch.no_grad():
        expected, _ = policy_logprobs(base, rollout, 1.0)
    mask = rollout.response_mask
    torch.testing.assert_close(rollout.ref_logprobs * mask, expected * mask)
    assert not torch.allclose(rollout.logprobs * mask, expected * mask)  # the adapter learned


def test_nan_reward_stops_with_an_error_naming_the_batch(tmp_path, tok):
    def broken(input_ids, attention_mask, response_start):
        out = planted_dense(input_ids, attention_mask, response_start)
        out[1, 0] = float("nan")
        return out

    trainer = make_trainer(tmp_path, tok, broken)
    with pytest.raises(FloatingPointError, match=r"iteration 0.*rollout row 1\b"):
        trainer.step()


def test_statistics_that_overflow_stop_the_run_instead_of_writing_invalid_json(tmp_path, tok):
    def huge(input_ids, attention_mask, response_start):  # finite, but sums overflow
        return torch.full_like(planted_dense(input_ids, attention_mask, response_start), 3e38)

    trainer = make_trainer(tmp_path, tok, huge)
    with pytest.raises(FloatingPointError, match=r"iteration 0: .*reward.* became NaN or inf"):
        trainer.train()
    assert (tmp_path / "ppo" / "ppo_log.jsonl").read_text() == ""  # no invalid row


def test_text_reward_source_puts_the_judge_score_on_the_last_token(tmp_path, tok):
    source = text_reward_source(lambda prompts, responses: [len(r) for r in responses], tok)
    trainer = make_trainer(tmp_path, tok, source)
    rollout = trainer.score(trainer.rollout(trainer._next_prompts()))
    lengths = rollout.response_mask.sum(-1)
    last = rollout.rewards[torch.arange(len(lengths)), lengths - 1]
    texts = [tok.decode(rollout.input_ids[i, s:s + n], skip_special_tokens=True)
             for i, (s, n) in enumerate(zip(rollout.response_start.tolist(), lengths.tolist(),
                                            strict=True))]
    assert last.tolist() == [float(len(t)) for t in texts]


def test_checkpoint_and_resume_continue_the_same_run(tmp_path, tok):
    full = make_trainer(tmp_path / "a", tok, planted_dense, num_iterations=4, save_steps=2,
                        save_strategy="steps")
    full_history = full.train()
    resumed = make_trainer(tmp_path / "a", tok, planted_dense, num_iterations=4,
                           resume_from_checkpoint=str(tmp_path / "a" / "ppo" / "checkpoint-2"))
    history = resumed.train()
    assert len(history) == 4 and resumed.iteration == 4
    assert history[:2] == full_history[:2]
    for a, b in zip(history[2:], full_history[2:], strict=True):
        assert a["reward"] == pytest.approx(b["reward"], rel=1e-4, abs=1e-6)


class _PlantedPayload:
    """Unpickling this runs ``Path.touch(sentinel)``: stands for an attacker's code."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.sentinel),))


@pytest.mark.parametrize("target", ["optimizer.pt", "rng_state.pt", "value_model.pt"])
def test_resume_refuses_a_checkpoint_with_a_planted_pickle_payload(tmp_path, tok, target):
    full = make_trainer(tmp_path / "a", tok, planted_dense, num_iterations=2, save_steps=2,
                        save_strategy="steps")
    full.train()
    ckpt = tmp_path / "a" / "ppo" / "checkpoint-2"
    sentinel = tmp_path / "payload-ran"
    torch.save({"state": {}, "param_groups": [_PlantedPayload(sentinel)]}, ckpt / target)
    resumed = make_trainer(tmp_path / "b", tok, planted_dense, num_iterations=3,
                           resume_from_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match=rf"{target}: refused: .*objects other than tensors"):
        resumed.train()
    assert not sentinel.exists()


def test_resume_refuses_an_old_pickled_trainer_state_without_loading_it(tmp_path, tok):
    full = make_trainer(tmp_path / "a", tok, planted_dense, num_iterations=2, save_steps=2,
                        save_strategy="steps")
    full.train()
    ckpt = tmp_path / "a" / "ppo" / "checkpoint-2"
    sentinel = tmp_path / "payload-ran"
    (ckpt / "trainer_state.json").unlink()
    torch.save({"iteration": 2, "rng": _PlantedPayload(sentinel)}, ckpt / "trainer_state.pt")
    resumed = make_trainer(tmp_path / "b", tok, planted_dense, num_iterations=3,
                           resume_from_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match=r"trainer_state.pt: .*pickle.*not loaded"):
        resumed.train()
    assert not sentinel.exists()


def test_checkpoint_holds_only_tensors_and_json(tmp_path, tok):
    import json

    full = make_trainer(tmp_path, tok, planted_dense, num_iterations=2, save_steps=2,
                        save_strategy="steps")
    full.train()
    ckpt = tmp_path / "ppo" / "checkpoint-2"
    for name in ("optimizer.pt", "rng_state.pt", "value_model.pt"):
        torch.load(ckpt / name, weights_only=True)  # raises on anything but tensors/containers
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["iteration"] == 2 and len(state["history"]) == 2
    assert not (ckpt / "trainer_state.pt").exists()


def _log_iterations(directory):
    import json

    lines = (directory / "ppo_log.jsonl").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines]


def test_log_of_a_resumed_run_continues_from_the_checkpoint(tmp_path, tok):
    full = make_trainer(tmp_path, tok, planted_dense, num_iterations=4, save_steps=2,
                        save_strategy="steps")
    full.train()
    assert _log_iterations(tmp_path / "ppo") == [0, 1, 2, 3]
    # Resume from iteration 2 into the same directory: rows 2, 3 are redone, not repeated.
    resumed = make_trainer(tmp_path, tok, planted_dense, num_iterations=5,
                           resume_from_checkpoint=str(tmp_path / "ppo" / "checkpoint-2"))
    resumed.train()
    assert _log_iterations(tmp_path / "ppo") == [0, 1, 2, 3, 4]
    # A fresh run into the same directory starts a fresh log.
    make_trainer(tmp_path, tok, planted_dense, num_iterations=2).train()
    assert _log_iterations(tmp_path / "ppo") == [0, 1]


@pytest.mark.parametrize("max_steps", [0, -3, 5])
def test_ppo_refuses_max_steps(tmp_path, tok, max_steps):
    with pytest.raises(ValueError, match="--max_steps"):
        PPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=max_steps)


def _learning_curve(tmp_path, tok, reward, seed):
    trainer = make_trainer(tmp_path / f"{seed}", tok, reward, seed=seed, num_iterations=16,
                           rollout_batch_size=16, per_device_train_batch_size=8,
                           max_new_tokens=24)
    planted = [h["reward"] / h["response_length"] for h in trainer.train()]
    return planted


def test_dense_rewards_learn_a_planted_objective_faster_than_their_sparse_sum(tmp_path, tok):
    # Same rewards, same seeds and settings; only where the reward sits differs. Measured
    # by the area under the learning curve (mean share of lowercase letters per response).
    dense, sparse = [], []
    for seed in (0, 1):
        dense.append(statistics.mean(_learning_curve(tmp_path / "d", tok, planted_dense, seed)))
        sparse.append(statistics.mean(_learning_curve(tmp_path / "s", tok, planted_sparse, seed)))
    assert statistics.mean(dense) > statistics.mean(sparse) + 0.03, (dense, sparse)


def test_cli_trains_ppo_with_a_saved_reward_model(tmp_path, tok):
    import json

    from editalign.cli import main

    rm_dir = tmp_path / "rm"
    TokenRewardModel.from_backbone("tiny").save_pretrained(rm_dir, tokenizer=tok)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Q{i}:"}) for i in range(6)) + "\n")
    out = tmp_path / "out"
    code = main(["train", "ppo", "--model", "tiny", "--reward_model", str(rm_dir),
                 "--reward", "sequence", "--prompts", str(prompts), "--output_dir", str(out),
                 "--num_iterations", "2", "--rollout_batch_size", "4",
                 "--per_device_train_batch_size", "2", "--max_new_tokens", "6",
                 "--use_cpu", "--report_to", "none", "--save_strategy", "no"])
    assert code == 0
    log = [json.loads(line) for line in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in log] == [0, 1]
    assert {"reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length",
            "time_rollout", "time_scoring", "time_update"} <= set(log[0])
    assert (out / "config.json").exists()  # the trained policy


def test_cli_resume_from_last_skips_an_incomplete_newest_checkpoint(tmp_path, tok, caplog,
                                                                   capsys):
    import json

    from editalign.cli import main

    rm_dir = tmp_path / "rm"
    TokenRewardModel.from_backbone("tiny").save_pretrained(rm_dir, tokenizer=tok)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Q{i}:"}) for i in range(6)) + "\n")
    out = tmp_path / "out"
    argv = ["train", "ppo", "--model", "tiny", "--reward_model", str(rm_dir),
            "--prompts", str(prompts), "--output_dir", str(out), "--rollout_batch_size", "4",
            "--per_device_train_batch_size", "2", "--max_new_tokens", "6", "--use_cpu",
            "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1"]
    assert main([*argv, "--num_iterations", "2"]) == 0
    # A crash while checkpoint-2 was being written: its state file never came.
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    with caplog.at_level("WARNING"):
        assert main([*argv, "--num_iterations", "3", "--resume_from_checkpoint", "last"]) == 0
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-2" in caplog.text
    assert _log_iterations(out) == [0, 1, 2]  # resumed at iteration 1, not from scratch
    # An explicit half-written checkpoint is refused, naming the missing file (exit 2).
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    assert main([*argv, "--num_iterations", "4", "--resume_from_checkpoint",
                 str(out / "checkpoint-3")]) == 2
    assert f"{out / 'checkpoint-3' / 'trainer_state.json'}: missing" in capsys.readouterr().err


def test_two_process_data_parallel_run_keeps_ranks_in_sync(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "ppo_ddp.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as s:  # torchrun hangs with --master_port 0: pick a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
                    str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["iterations"] for r in ranks] == [2, 2]
    # different prompts and samples per rank, but gradients are all-reduced: same weights
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    start = load_model("tiny")
    initial = float(sum(p.double().sum() for p in start.parameters()))
    assert ranks[0]["checksum"] != pytest.approx(initial, rel=1e-9)
