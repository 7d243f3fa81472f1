"""Dense GRPO (editalign.train.grpo): stock TRL GRPO when the token term is 0, the token term of
losses.group_token_term on top otherwise, the TRL hooks it relies on, and the command."""

import inspect
import json

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from editalign.losses import dense_group_advantages
from editalign.models import load_model, load_tokenizer
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.reward_sources import ResponseScores, token_rm_source
from editalign.train import grpo
from editalign.train.grpo import DenseGRPOConfig, DenseGRPOTrainer

PROMPTS = ["Q: abc", "Question: d"]
G = 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def even_tokens(ids) -> float:
    return float(sum(1 for t in ids if int(t) % 2 == 0))


def even_reward(prompts, completions, completion_ids, **_):
    """A TRL reward function: the number of even token ids in the completion."""
    return [even_tokens(ids) for ids in completion_ids]


class EvenSource:
    """The same outcome as even_reward, and a constant token reward (its token term is 0)."""

    name = "even"
    dense = True

    def __init__(self, token_value: float = 1.0) -> None:
        self.token_value = token_value

    def score(self, input_ids, attention_mask, response_start):
        lengths = attention_mask.sum(-1) - response_start
        width = int(lengths.max())
        cols = torch.arange(width)
        mask = cols[None, :] < lengths[:, None]
        seq = torch.tensor([even_tokens(row[s:s + n]) for row, s, n in
                            zip(input_ids, response_start.tolist(), lengths.tolist(), strict=True)])
        tokens = torch.where(mask, self.token_value, 0.0)
        return ResponseScores(sequence=seq, tokens=tokens, lengths=lengths)


def config(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False,
                per_device_train_batch_size=len(PROMPTS) * G, num_generations=G,
                max_completion_length=6, max_steps=1, report_to=[], logging_steps=1,
                save_strategy="no", seed=0, disable_tqdm=True, temperature=1.0)
    base.update(kw)
    return cls(**base)


def inputs():
    return [{"prompt": p} for p in PROMPTS for _ in range(G)]  # TRL's RepeatSampler order


def loss_and_grads(trainer):
    torch.manual_seed(0)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train() sets per step
    out = trainer._generate_and_score_completions(inputs())
    loss = trainer.compute_loss(trainer.model, out)
    trainer.model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("loss_type,beta", [("dapo", 0.0), ("grpo", 0.04), ("dr_grpo", 0.0)])
def test_a_zero_token_term_gives_stock_grpo_loss_and_gradients(tok, tmp_path, loss_type, beta):
    """A constant token reward: the dense path runs ((B, T) advantages, the gather, the
    token term, exactly 0) and loss and gradients equal stock GRPOTrainer's bit for bit."""
    ds = Dataset.from_dict({"prompt": PROMPTS})
    stock = GRPOTrainer(load_model("tiny"), [even_reward],
                        config(GRPOConfig, tmp_path, loss_type=loss_type, beta=beta),
                        train_dataset=ds, processing_class=tok)
    dense = DenseGRPOTrainer(load_model("tiny"), None,
                             config(DenseGRPOConfig, tmp_path, loss_type=loss_type, beta=beta,
                                    token_coef=1.0, token_term="reward"),
                             reward_source=EvenSource(), train_dataset=ds, processing_class=tok)
    out_s, loss_s, grads_s = loss_and_grads(stock)
    out_d, loss_d, grads_d = loss_and_grads(dense)
    assert torch.equal(out_s["completion_ids"], out_d["completion_ids"])
    assert out_s["advantages"].dim() == 1 and out_d["advantages"].dim() == 2
    assert out_s["advantages"].abs().sum() > 0  # the outcome term is not trivially 0
    assert torch.equal(out_d["advantages"],
                       out_s["advantages"][:, None] * out_s["completion_mask"])
    assert torch.equal(loss_s, loss_d)
    assert grads_s.keys() == grads_d.keys() and grads_s
    for name, grad in grads_s.items():
        assert torch.equal(grad, grads_d[name]), name


def test_lambda_zero_leaves_trl_advantages_untouched(tok, tmp_path):
    ds = Dataset.from_dict({"prompt": PROMPTS})
    dense = DenseGRPOTrainer(load_model("tiny"), None,
                             config(DenseGRPOConfig, tmp_path, token_coef=0.0),
                             reward_source=EvenSource(0.3), train_dataset=ds,
                             processing_class=tok)
    stock = GRPOTrainer(load_model("tiny"), [even_reward], config(GRPOConfig, tmp_path),
                        train_dataset=ds, processing_class=tok)
    out_d, loss_d, _ = loss_and_grads(dense)
    out_s, loss_s, _ = loss_and_grads(stock)
    assert out_d["advantages"].dim() == 1
    assert torch.equal(out_d["advantages"], out_s["advantages"]) and torch.equal(loss_d, loss_s)


@pytest.mark.parametrize("token_term,scale", [("reward_to_go", "group"), ("reward", "batch"),
                                               ("reward_to_go", "none")])
def test_dense_advantages_are_the_shared_rule_on_a_token_rm(tok, tmp_path, token_term, scale):
    """The trainer's (B, T) advantages are losses.dense_group_advantages of the source's
    scores: the one rule, the same the verl plugin uses."""
    torch.manual_seed(0)
    rm = TokenRewardModel.from_backbone("tiny", RewardModelConfig(), tokenizer=tok).eval()
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    source = token_rm_source(rm)
    ds = Dataset.from_dict({"prompt": PROMPTS})
    trainer = DenseGRPOTrainer(load_model("tiny"), None,
                               config(DenseGRPOConfig, tmp_path, token_coef=0.7,
                                      token_term=token_term, scale_rewards=scale),
                               reward_source=source, train_dataset=ds, processing_class=tok)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(inputs())
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"],
                                                            strict=True)]
    completions = [row[m.bool()].tolist() for row, m in zip(out["completion_ids"],
                                                            out["completion_mask"], strict=True)]
    from editalign.reward_sources import right_padded

    scores = source.score(*right_padded(prompt_ids, completions, tok.pad_token_id))
    mask = out["completion_mask"]
    groups = torch.arange(len(completions)) // G
    expected = dense_group_advantages(scores.sequence, scores.tokens, mask, groups,
                                      token_coef=0.7, token_term=token_term, scale=scale)
    assert out["advantages"].shape == mask.shape
    assert torch.allclose(out["advantages"], expected, atol=1e-6)
    assert (out["advantages"] - out["advantages"][:, :1]).abs().max() > 1e-3  # per token
    assert torch.all(out["advantages"][mask == 0] == 0)


def test_the_trl_hooks_are_the_ones_overridden(monkeypatch):
    grpo.check_trl_hooks()  # TRL 1.16 as pinned
    for name in grpo.HOOKS:  # every hook exists on the class this trainer subclasses
        assert name in vars(GRPOTrainer), name
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for landmark in grpo.LANDMARKS["_generate_and_score_completions"]:
        assert landmark in source

    def changed(self, prompts, images):  # a TRL upgrade that changes a hooked signature
        return None

    monkeypatch.setattr(GRPOTrainer, "_generate", changed)
    with pytest.raises(RuntimeError, match=r"GRPOTrainer\._generate\b"):
        grpo.check_trl_hooks()


def test_a_landmark_lost_names_the_method(monkeypatch):
    monkeypatch.setitem(grpo.LANDMARKS, "_compute_loss", ["no such line in TRL"])
    with pytest.raises(RuntimeError, match=r"GRPOTrainer\._compute_loss"):
        grpo.check_trl_hooks()


def test_use_vllm_without_vllm_is_a_clear_error(tmp_path, monkeypatch):
    import importlib

    utils = importlib.import_module("trl.import_utils")
    monkeypatch.setattr(utils, "is_vllm_available", lambda: False)
    cfg = config(DenseGRPOConfig, tmp_path)
    cfg.use_vllm = True
    with pytest.raises(ValueError, match="vLLM is not installed"):
        grpo.check_vllm(cfg)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A user's module holding a TRL reward function, importable as grpo_user_rewards."""
    (tmp_path / "grpo_user_rewards.py").write_text(
        "def even_reward(prompts, completions, completion_ids, **_):\n"
        "    return [float(sum(1 for t in ids if t % 2 == 0)) for ids in completion_ids]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "grpo_user_rewards:even_reward"


def test_cli_trains_with_each_reward_source(tmp_path, tok, capsys, reward_module):
    """`editalign train grpo` with a token RM, a sequence RM, a DPO policy and a TRL function."""
    from editalign.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    rm_dir = tmp_path / "rm"
    TokenRewardModel.from_backbone("tiny", RewardModelConfig(), tokenizer=tok).save_pretrained(
        rm_dir)
    tok.save_pretrained(rm_dir)
    dpo_dir = tmp_path / "dpo"
    load_model("tiny:1").save_pretrained(dpo_dir)
    tok.save_pretrained(dpo_dir)
    common = ["--model", "tiny", "--prompts", str(prompts), "--max_steps", "1",
              "--per_device_train_batch_size", "4", "--num_generations", "2",
              "--max_completion_length", "4", "--report_to", "none", "--save_strategy", "no",
              "--disable_tqdm", "True", "--logging_steps", "1", "--bf16", "False"]
    for reward, model_dir in (("token", rm_dir), ("sequence", rm_dir), ("dpo", dpo_dir)):
        out = tmp_path / f"out-{reward}"
        argv = ["train", "grpo", *common, "--reward", reward, "--reward_model", str(model_dir),
                "--output_dir", str(out)]
        assert main(argv) == 0, reward
        assert (out / "model.safetensors").is_file()
        state = json.loads((out / "trainer_state.json").read_text())
        logged = state["log_history"][0]
        assert "reward" in logged and ("token_reward/mean" in logged) == (reward != "sequence")
    out = tmp_path / "out-fn"
    argv = ["train", "grpo", *common, "--reward", "none", "--reward_funcs",
            reward_module, "--output_dir", str(out)]
    assert main(argv) == 0
    assert "rewards/even_reward/mean" in json.loads(
        (out / "trainer_state.json").read_text())["log_history"][0]
    assert "GRPO (none rewards" in capsys.readouterr().out


def test_cli_lora(tmp_path, tok, reward_module):
    from editalign.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "lora"
    argv = ["train", "grpo", "--model", "tiny", "--prompts", str(prompts), "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--num_generations", "2",
            "--max_completion_length", "4", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "True", "--bf16", "False", "--lora_r", "4", "--beta", "0.1",
            "--reward", "none", "--reward_funcs", reward_module,
            "--output_dir", str(out)]
    assert main(argv) == 0
    assert (out / "adapter_model.safetensors").is_file()


def test_bad_input_is_exit_2(tmp_path, capsys):
    from editalign.cli import main

    assert main(["train", "grpo", "--prompts", str(tmp_path / "p.jsonl"), "--reward", "judge",
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert "unknown reward 'judge'" in capsys.readouterr().err
    assert main(["train", "grpo", "--prompts", str(tmp_path / "p.jsonl"), "--reward", "token",
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert "--reward token needs --reward_model" in capsys.readouterr().err
