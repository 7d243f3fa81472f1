"""Reward sources (editalign.reward_sources): each against the model read row by row, unpadded."""

import pytest
import torch

from editalign.models import load_model, load_tokenizer
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.reward_sources import (
    ResponseScores,
    dpo_source,
    make_source,
    right_padded,
    score_in_batches,
    sequence_rm_source,
    text_source,
    token_rm_source,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def rows(tok):
    return [(tok("Q: abc", add_special_tokens=False)["input_ids"], list(b"xyz!")),
            (tok("Question: d", add_special_tokens=False)["input_ids"], list(b"hi"))]


@pytest.fixture(scope="module")
def batch(rows, tok):
    return right_padded([p for p, _ in rows], [r for _, r in rows], tok.pad_token_id)


@pytest.fixture(scope="module")
def reward_model(tok):
    torch.manual_seed(0)
    model = TokenRewardModel.from_backbone("tiny", RewardModelConfig(), tokenizer=tok).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # rewards far from 0
    return model


def test_right_padded_layout(rows, batch, tok):
    input_ids, attention_mask, start = batch
    assert start.tolist() == [len(p) for p, _ in rows]
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        assert input_ids[i, :n].tolist() == p + r
        assert attention_mask[i].tolist() == [1] * n + [0] * (input_ids.shape[1] - n)
        assert torch.all(input_ids[i, n:] == tok.pad_token_id)


def test_token_source_reads_every_response_token(rows, batch, reward_model):
    scores = token_rm_source(reward_model).score(*batch)
    assert scores.tokens.shape == (2, 4) and scores.lengths.tolist() == [4, 2]
    for i, (p, r) in enumerate(rows):
        with torch.no_grad():
            alone = reward_model(torch.tensor([p + r])).rewards[0]
        assert torch.allclose(scores.tokens[i, :len(r)], alone[len(p):], atol=1e-5)
        assert torch.all(scores.tokens[i, len(r):] == 0)
        assert scores.sequence[i].item() == pytest.approx(alone[len(p):].sum().item(), abs=1e-5)
    assert scores.per_token() is scores.tokens


def test_sequence_source_reads_the_last_token_only_and_restores_the_model(rows, batch,
                                                                          reward_model):
    scores = sequence_rm_source(reward_model).score(*batch)
    assert scores.tokens is None
    assert reward_model.reward_config.read_at == "token"  # not left flipped
    dense = scores.per_token()
    for i, (p, r) in enumerate(rows):
        with torch.no_grad():
            last = reward_model(torch.tensor([p + r])).rewards[0, -1].item()
        assert scores.sequence[i].item() == pytest.approx(last, abs=1e-5)
        assert dense[i, len(r) - 1].item() == scores.sequence[i].item()
        assert torch.count_nonzero(dense[i]) == 1


def test_dpo_source_sums_to_the_implicit_sequence_reward(rows, batch):
    dpo, ref = load_model("tiny:1").eval(), load_model("tiny:0").eval()
    beta = 0.3
    scores = dpo_source(dpo, ref, beta).score(*batch)
    for i, (p, r) in enumerate(rows):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = [torch.log_softmax(m(ids).logits[0].double(), -1) for m in (dpo, ref)]
        per_token = [beta * (lp[0][len(p) + j - 1, t] - lp[1][len(p) + j - 1, t]).item()
                     for j, t in enumerate(r)]
        assert scores.tokens[i, :len(r)].tolist() == pytest.approx(per_token, abs=1e-5)
        assert scores.sequence[i].item() == pytest.approx(sum(per_token), abs=1e-5)
        assert torch.all(scores.tokens[i, len(r):] == 0)


def test_text_source_decodes_each_row(rows, batch, tok):
    seen = []

    def judge(prompts, responses):
        seen.extend(zip(prompts, responses, strict=True))
        return [float(len(r)) for r in responses]

    scores = text_source(judge, tok).score(*batch)
    assert [r for _, r in seen] == ["xyz!", "hi"]
    assert scores.sequence.tolist() == [4.0, 2.0] and scores.tokens is None
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        text_source(lambda p, r: [0.0], tok).score(*batch)


def test_make_source_names_what_is_missing(reward_model):
    assert make_source("token", reward_model=reward_model).dense
    assert not make_source("sequence", reward_model=reward_model).dense
    with pytest.raises(ValueError, match="needs a reward model"):
        make_source("token")
    with pytest.raises(ValueError, match="DPO policy"):
        make_source("dpo", reward_model=reward_model)
    with pytest.raises(ValueError):
        make_source("judge", reward_model=reward_model)


def test_per_token_of_a_sequence_score_sits_on_the_last_token():
    scores = ResponseScores(sequence=torch.tensor([1.5, -2.0]), tokens=None,
                            lengths=torch.tensor([3, 1]))
    assert scores.per_token().tolist() == [[0.0, 0.0, 1.5], [-2.0, 0.0, 0.0]]


def test_score_in_batches_keeps_row_order_and_reads_each_row_as_one_batch(rows, tok,
                                                                          reward_model):
    prompts = [p for p, _ in rows] * 2
    responses = [r for _, r in rows] + [r[:1] for _, r in rows]
    source = token_rm_source(reward_model)
    together = source.score(*right_padded(prompts, responses, tok.pad_token_id))
    for order in ("given", "length"):
        scored = score_in_batches(source, prompts, responses, tok.pad_token_id, 2, order=order)
        assert [len(row.tokens) for row in scored] == [len(r) for r in responses]
        for i, row in enumerate(scored):
            assert row.sequence == pytest.approx(float(together.sequence[i]), abs=1e-5)
            assert torch.allclose(row.tokens, together.tokens[i, :len(responses[i])], atol=1e-5)
    last = score_in_batches(sequence_rm_source(reward_model), prompts, responses,
                            tok.pad_token_id, 3)
    assert all(row.tokens is None for row in last)
    assert [row.sequence for row in last] == pytest.approx(
        [float(row.tokens[-1]) for row in scored], abs=1e-5)


def test_score_in_batches_names_a_non_finite_row(rows, tok):
    from editalign.reward_model import NonFiniteRewardError

    model = TokenRewardModel.from_backbone("tiny", RewardModelConfig(), tokenizer=tok).eval()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteRewardError, match="the answer to q0"):
        score_in_batches(token_rm_source(model), [p for p, _ in rows], [r for _, r in rows],
                         tok.pad_token_id, 1, names=["the answer to q0", "the answer to q1"])
