"""Reward models on the shared-prefix pair layout: per-token rewards, every objective's loss,
gradients and a short training run equal the padded layout's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from editalign.batching.shared_prefix import (
    AUTO_SHARED_MAX_RATIO,
    build_shared_prefix_batch,
    shared_prefix_ratio,
    side_token_rows,
)
from editalign.batching.tokens import PairDataset, RewardPairCollator
from editalign.data.align import IGNORE, align
from editalign.data.labeling import LabeledPair, TokenizedSide
from editalign.models import load_tokenizer, resolve_model_path
from editalign.reward_model import TokenRewardModel
from editalign.train.reward import RewardConfig, RewardTrainer

BAD = ord("B")
a, b, c, d, e, f, x = (ord(ch) for ch in "abcdefx")
PROMPT = [ord(ch) for ch in "question"]

# (prompt, original response, revised response)
CASES = {
    "mid_edit": (PROMPT[:6], [a, b, c, d, e], [a, b, x, d, e, f]),
    "edit_at_first_response_token": (PROMPT[:4], [BAD, b, c], [a, b, c]),
    "no_edit": (PROMPT, [a, b, c, d], [a, b, c, d]),
    "insertion_at_end": (PROMPT[:5], [a, b], [a, b, c]),
    "deletion": (PROMPT[:3], [a, b, BAD, c], [a, b, c]),
}

OBJECTIVES = ["token_cls", "edit_bt", "seq_bt", "seq_bt_last",
              "token_cls=1,edit_bt=0.5,seq_bt=0.3,seq_bt_last=0.2"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def labelled_pair(name: str, prompt: list[int], original: list[int], revised: list[int],
                  bos: int, eos: int) -> LabeledPair:
    alignment = align(original, revised)
    prompt = [bos, *prompt]

    def side(response: list[int], labels: list[int]) -> TokenizedSide:
        return TokenizedSide(prompt + response + [eos], [IGNORE] * len(prompt) + labels + [0],
                             len(prompt), [(0, 0)] * (len(response) + 1))

    return LabeledPair(name, "", "", "", side(original, alignment.original_labels),
                       side(revised, alignment.revised_labels), alignment.distance)


@pytest.fixture(scope="module")
def pairs(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [labelled_pair(name, *case, bos, eos) for name, case in CASES.items()]


def reward_model(config: RewardConfig, attn: str = "sdpa") -> TokenRewardModel:
    torch.manual_seed(0)  # the head's initialisation
    backbone = AutoModel.from_pretrained(resolve_model_path("tiny"), attn_implementation=attn,
                                         local_files_only=True)
    return TokenRewardModel(backbone, config.model_config())


def reward_config(tmp_path, **kw) -> RewardConfig:
    base = dict(output_dir=str(tmp_path / "rm"), use_cpu=True, save_strategy="no", seed=0,
                disable_tqdm=True, logging_steps=1, report_to="none")
    return RewardConfig(**{**base, **kw})


def features(pairs: list[LabeledPair]) -> list[dict]:
    dataset = PairDataset(pairs)
    return [dataset[i] for i in range(len(dataset))]


def test_side_token_rows_point_at_each_token_and_its_position(pairs):
    for lp in pairs:
        original, revised = lp.original.input_ids, lp.revised.input_ids
        layout = build_shared_prefix_batch([(original, revised)])
        for ids, rows in zip((original, revised), side_token_rows(original, revised),
                             strict=True):
            assert layout.input_ids[0, rows].tolist() == ids
            assert layout.position_ids[0, rows].tolist() == list(range(len(ids)))
    first = pairs[list(CASES).index("edit_at_first_response_token")]
    # the first edit is the first response token: the shared prefix is exactly the prompt
    assert build_shared_prefix_batch(
        [(first.original.input_ids, first.revised.input_ids)]).prefix_lengths == [
        first.original.response_start]


def run_loss(trainer: RewardTrainer, batch: dict) -> tuple:
    model = trainer.model
    model.zero_grad()
    loss, parts, out = trainer._loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, out, grads


# eager attention (additive float mask) once, with the mix that has every loss
@pytest.mark.parametrize(("objective", "attn"),
                         [(o, "sdpa") for o in OBJECTIVES] + [(OBJECTIVES[-1], "eager")])
def test_shared_layout_gives_the_padded_rewards_losses_and_gradients(
        tmp_path, tokenizer, pairs, objective, attn):
    config = reward_config(tmp_path, objective=objective, pair_layout="shared",
                           equal_weight=0.1, center_rewards_coefficient=0.01)
    trainer = RewardTrainer(reward_model(config, attn), config, train_dataset=pairs,
                            processing_class=tokenizer)
    trainer.model.train()
    feats = features(pairs)
    shared = trainer.data_collator(feats)
    padded = RewardPairCollator(pad_token_id=tokenizer.pad_token_id)(feats)
    assert shared["attention_mask"].dim() == 4 and "token_rows" in shared
    assert shared["input_ids"].numel() < padded["input_ids"].numel()
    assert torch.equal(shared["edit_labels"], padded["edit_labels"])
    assert torch.equal(shared["token_mask"], padded["attention_mask"])

    loss_p, parts_p, out_p, grads_p = run_loss(trainer, padded)
    loss_s, parts_s, out_s, grads_s = run_loss(trainer, shared)
    # per-token rewards (and head logits) of both sides, on every real token
    assert out_s.rewards.shape == out_p.rewards.shape
    real = padded["attention_mask"].bool()
    for key in ("rewards", "logits"):
        torch.testing.assert_close(getattr(out_s, key)[real].detach(),
                                   getattr(out_p, key)[real].detach(), rtol=1e-5, atol=1e-5)
    assert set(parts_s) == set(parts_p) == set(config.objectives())
    for name in parts_p:
        torch.testing.assert_close(parts_s[name], parts_p[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_s, loss_p, rtol=1e-5, atol=1e-5)
    assert grads_s.keys() == grads_p.keys() and any(n.startswith("head.") for n in grads_p)
    for n in grads_p:
        torch.testing.assert_close(grads_s[n], grads_p[n], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("objective", ["token_cls=1,edit_bt=0.5", "seq_bt_last"])
def test_shared_layout_trains_and_evaluates_like_padded(tmp_path, tokenizer, pairs, objective):
    kw = dict(objective=objective, optim="sgd", learning_rate=0.5, max_steps=4,
              per_device_train_batch_size=2)
    trainers = []
    for layout in ("padded", "shared"):
        config = reward_config(tmp_path / layout, pair_layout=layout, **kw)
        trainer = RewardTrainer(reward_model(config), config, train_dataset=pairs * 2,
                                eval_dataset=pairs, processing_class=tokenizer)
        trainer.train()
        trainers.append(trainer)
    padded, shared = trainers
    assert shared.pair_layout.layout == "shared" and padded.pair_layout.layout == "padded"
    history = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in trainers]
    assert len(history[0]) == 4
    assert history[1] == pytest.approx(history[0], rel=1e-5, abs=1e-6)
    assert shared.train_tokens == padded.train_tokens
    w, s = padded.model.state_dict(), shared.model.state_dict()
    assert max((w[k] - s[k]).abs().max().item() for k in w) < 1e-5
    # evaluation goes through the same collator: the metrics read the gathered rewards
    metrics = [t.evaluate() for t in trainers]
    for key, value in metrics[0].items():
        if not key.endswith("runtime"):
            assert metrics[1][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_auto_layout_chooses_per_batch(tmp_path, tokenizer, pairs):
    config = reward_config(tmp_path, pair_layout="auto")
    trainer = RewardTrainer(reward_model(config), config, train_dataset=pairs,
                            processing_class=tokenizer)
    feats = features(pairs)
    assert shared_prefix_ratio(feats) <= AUTO_SHARED_MAX_RATIO
    assert "token_rows" in trainer.data_collator(feats)
    # nothing in common: the shared layout is no smaller, the batch stays padded
    different = [{"original_input_ids": [1, 2, 3, 4], "original_labels": [IGNORE, 0, 0, 0],
                  "revised_input_ids": [9, 8, 7, 6], "revised_labels": [IGNORE, 0, 0, 0]}]
    out = trainer.data_collator(different)
    assert "token_rows" not in out and out["attention_mask"].dim() == 2


def test_unsupported_attention_falls_back_to_padded_with_the_reason(
        tmp_path, tokenizer, pairs, monkeypatch, caplog):
    config = reward_config(tmp_path, pair_layout="shared")
    model = reward_model(config)
    # pretend: an implementation that cannot take the 4-D mask
    monkeypatch.setattr(model.backbone.config, "_attn_implementation", "flash_attention_2")
    with caplog.at_level("WARNING", logger="editalign.batching.layout"):
        trainer = RewardTrainer(model, config, train_dataset=pairs, processing_class=tokenizer)
    # the config keeps what was asked for; the layout object says what runs, and why
    assert config.pair_layout == "shared" and trainer.pair_layout.layout == "padded"
    assert "flash_attention_2" in trainer.pair_layout.fallback_reason
    assert trainer.data_collator.layout is trainer.pair_layout
    assert "flash_attention_2" in caplog.text and "using padded" in caplog.text
    assert trainer.data_collator(features(pairs))["attention_mask"].dim() == 2


def test_pair_layout_option(tmp_path):
    assert reward_config(tmp_path).pair_layout == "padded"
    with pytest.raises(ValueError, match="pair_layout"):
        reward_config(tmp_path, pair_layout="packed")


def test_flex_attention_shared_layout_gives_the_sdpa_padded_losses_and_gradients(
        tmp_path, tokenizer, pairs, monkeypatch):
    # FlexAttention on CPU: torch's unfused reference implementation with its CPU-backward
    # guard lifted (see tests/test_shared_prefix.py::flex_reference for why).
    import torch.nn.attention.flex_attention as torch_flex
    import transformers.integrations.flex_attention as hf_flex

    def unfused(query, key, value, training=False, **kwargs):
        return torch_flex.flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", unfused)
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)
    objective = OBJECTIVES[-1]
    config = reward_config(tmp_path, objective=objective, pair_layout="shared",
                           equal_weight=0.1, center_rewards_coefficient=0.01)
    flex = RewardTrainer(reward_model(config, "flex_attention"), config, train_dataset=pairs,
                         processing_class=tokenizer)
    assert flex.args.pair_layout == "shared"
    padded_config = reward_config(tmp_path / "p", objective=objective, equal_weight=0.1,
                                  center_rewards_coefficient=0.01)
    sdpa = RewardTrainer(reward_model(padded_config), padded_config, train_dataset=pairs,
                         processing_class=tokenizer)
    feats = features(pairs)
    shared = flex.data_collator(feats)
    assert "segments" in shared and "attention_mask" not in shared
    padded = sdpa.data_collator(feats)
    loss_p, parts_p, out_p, grads_p = run_loss(sdpa, padded)
    loss_s, parts_s, out_s, grads_s = run_loss(flex, shared)
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(out_s.rewards[real].detach(), out_p.rewards[real].detach(),
                               rtol=1e-5, atol=1e-5)
    for name in parts_p:
        torch.testing.assert_close(parts_s[name], parts_p[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_s, loss_p, rtol=1e-5, atol=1e-5)
    assert grads_s.keys() == grads_p.keys()
    for n in grads_p:
        torch.testing.assert_close(grads_s[n], grads_p[n], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, n=n: f"{n}: {m}")
