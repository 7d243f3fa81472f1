"""TokenRewardModel: shapes, the PPO reward source, save/load, tokenizer checks."""

import pytest
import torch

from editalign.models import build_tiny_tokenizer, load_tokenizer
from editalign.reward_model import (
    RewardModelConfig,
    TokenizerMismatchError,
    TokenRewardModel,
)
from editalign.train.common import ModelArguments


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def _batch(pad_id):
    torch.manual_seed(0)
    ids = torch.randint(0, 250, (2, 9))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad_id, 0  # second row is 6 tokens long
    return ids, mask


def test_forward_gives_one_reward_per_position(tokenizer):
    model = TokenRewardModel.from_backbone("tiny", RewardModelConfig(transform="sigmoid"),
                                           tokenizer=tokenizer)
    ids, mask = _batch(tokenizer.pad_token_id)
    out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == out.rewards.shape == (2, 9)
    assert torch.allclose(out.rewards, 2 * torch.sigmoid(out.logits) - 1)
    # causal: a token's reward depends on its prefix only
    prefix = model(input_ids=ids[:1, :4]).logits
    assert torch.allclose(prefix, out.logits[:1, :4], atol=1e-5)


@pytest.mark.parametrize("read_at", ["token", "last"])
def test_response_rewards_token_fills_all_sequence_fills_last(tokenizer, read_at):
    model = TokenRewardModel.from_backbone("tiny", RewardModelConfig(read_at=read_at),
                                           tokenizer=tokenizer)
    ids, mask = _batch(tokenizer.pad_token_id)
    full = model(input_ids=ids, attention_mask=mask).rewards
    out = model.response_rewards(ids, mask, response_start=[3, 2])
    # responses: row 0 positions 3..8 (6 tokens), row 1 positions 2..5 (4 tokens)
    assert out.shape == (2, 6)
    if read_at == "token":
        assert torch.allclose(out[0], full[0, 3:9])
        assert torch.allclose(out[1, :4], full[1, 2:6])
        assert torch.all(out[1, 4:] == 0)
    else:
        assert out[0, 5] == full[0, 8] and out[1, 3] == full[1, 5]
        assert int((out != 0).sum()) == 2


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_round_trip_gives_identical_rewards(tmp_path, tokenizer, lora):
    peft = ModelArguments(lora_r=4).peft_config("FEATURE_EXTRACTION") if lora else None
    model = TokenRewardModel.from_backbone(
        "tiny", RewardModelConfig(transform="sigmoid", objectives={"token_cls": 1.0}),
        peft_config=peft, tokenizer=tokenizer)
    with torch.no_grad():  # make the head and (for LoRA) the adapters non-trivial
        model.head.bias.fill_(0.3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    model.eval()
    ids, mask = _batch(tokenizer.pad_token_id)
    before = model(input_ids=ids, attention_mask=mask).rewards
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    assert (tmp_path / "rm" / "reward_head.safetensors").is_file()
    loaded = TokenRewardModel.from_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    after = loaded(input_ids=ids, attention_mask=mask).rewards
    if lora:  # merged into the weights: equal up to float rounding
        assert torch.allclose(before, after, atol=1e-5)
    else:
        assert torch.equal(before, after)
    assert loaded.reward_config.objectives == {"token_cls": 1.0}
    assert loaded.reward_config.transform == "sigmoid"
    # the saved tokenizer is the training tokenizer
    saved_tok = TokenRewardModel.load_tokenizer(tmp_path / "rm")
    loaded.check_tokenizer(saved_tok)


def test_mismatched_tokenizer_is_a_clear_error(tmp_path, tokenizer):
    model = TokenRewardModel.from_backbone("tiny", tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(TokenizerMismatchError, match=r"tokenizer mismatch.*'tiny'"):
        TokenRewardModel.from_pretrained(tmp_path / "rm", tokenizer=other)
    with pytest.raises(TokenizerMismatchError):
        model.check_tokenizer(other)


def test_from_pretrained_on_a_plain_directory_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        TokenRewardModel.from_pretrained(tmp_path)


def test_lora_trains_only_adapters_and_the_head(tokenizer):
    peft = ModelArguments(lora_r=4).peft_config("FEATURE_EXTRACTION")
    model = TokenRewardModel.from_backbone("tiny", peft_config=peft, tokenizer=tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all(n.startswith("head.") or "lora_" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
