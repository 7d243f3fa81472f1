"""Whole-response context of token reward models (echo, bidirectional block; encoders):
the mask rule, the echo rows, equality of the layouts, and every consumer honouring the
saved mode."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from editalign.batching.layout import PairLayout
from editalign.batching.tokens import PairDataset, RewardPairCollator, token_outputs
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import EditPair
from editalign.data.prompts import encode_example
from editalign.masks import segment_mask
from editalign.models import load_tokenizer, resolve_model_path
from editalign.reward_model import (
    REWARD_CONFIG_NAME,
    RewardModelConfig,
    TokenRewardModel,
    echo_sequence,
    resolve_context,
)

FULL = ["echo", "bidirectional"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def tiny_rm(context: str, attn: str = "sdpa", transform: str = "identity") -> TokenRewardModel:
    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(resolve_model_path("tiny"), attn_implementation=attn,
                                         local_files_only=True)
    return TokenRewardModel(backbone, RewardModelConfig(context=context,
                                                        transform=transform)).eval()


def tiny_bert(vocab: int) -> TokenRewardModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    return TokenRewardModel(BertModel(config), RewardModelConfig()).eval()


# ----------------------------------------------------------------------------- pure parts


def test_bidirectional_segment_mask_by_hand():
    # prompt 0 0, response 1 1 1, padding
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = segment_mask(seg, bidirectional=True)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],  # the prompt stays causal, never sees the response
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 1, 0],  # every response token sees the whole response
                 [1, 1, 1, 1, 1, 0],
                 [1, 1, 1, 1, 1, 0],
                 [0, 0, 0, 0, 0, 1]]  # padding sees itself
    causal = segment_mask(seg)[0, 0].int().tolist()
    assert causal[2] == [1, 1, 1, 0, 0, 0]
    # two suffix blocks (shared-prefix layout): a block never sees the other one
    two = segment_mask(torch.tensor([[0, 1, 1, 2, 2]]), bidirectional=True)[0, 0].int().tolist()
    assert two[1] == [1, 1, 1, 0, 0] and two[3] == [1, 0, 0, 1, 1]


def test_echo_sequence_by_hand():
    ids, read = echo_sequence([7, 8, 1, 2, 3], 2)
    assert ids == [7, 8, 1, 2, 3, 1, 2, 3]
    assert read == [0, 1, 5, 6, 7]  # prompt where it is, response at its second copy


def test_context_resolution():
    assert resolve_context("auto", True) == "causal"
    assert resolve_context("auto", False) == "bidirectional"
    assert resolve_context("full", False) == "bidirectional"
    assert resolve_context("full", True) in FULL
    with pytest.raises(ValueError, match="encoder"):
        resolve_context("echo", False)
    with pytest.raises(ValueError, match="context"):
        resolve_context("sideways", True)


# ----------------------------------------------------------------------------- the model


def _rows(pad: int):
    # two rows, same prompt, responses differing only at their last word token
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 2], [1, 5, 6, 7, 8, 9, 11, 2]])
    short = torch.tensor([[1, 5, 6, 7, 8, 2, pad, pad]])
    return ids, short


@pytest.mark.parametrize("context", FULL)
def test_full_context_reads_later_tokens_and_causal_does_not(tokenizer, context):
    ids, _ = _rows(tokenizer.pad_token_id)
    mask = torch.ones_like(ids)
    full = tiny_rm(context)(ids, mask, response_start=[3, 3]).rewards
    causal = tiny_rm("causal")(ids, mask).rewards
    changed = (full[0] - full[1]).abs() > 1e-6
    assert changed[3:].all()  # every response token sees the change at position 6
    assert not changed[:3].any()  # the prompt never reads the response
    assert not ((causal[0] - causal[1]).abs()[:6] > 1e-6).any()
    assert not torch.allclose(full, causal)  # a model whose full rewards differ from causal


@pytest.mark.parametrize("context", FULL)
def test_full_context_is_padding_invariant_and_needs_response_start(tokenizer, context):
    model = tiny_rm(context)
    ids, short = _rows(tokenizer.pad_token_id)
    batch = torch.cat([ids[:1], short])
    mask = (torch.arange(8)[None] < torch.tensor([[8], [6]])).long()
    both = model(batch, mask, response_start=[3, 3]).rewards
    alone = model(short[:, :6], response_start=[3]).rewards
    assert torch.allclose(both[1, :6], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="response_start"):
        model(batch, mask)


def test_echo_equals_a_hand_built_echo_row(tokenizer):
    model = tiny_rm("echo")
    ids = [1, 5, 6, 7, 8, 9, 2]
    echoed = torch.tensor([ids + ids[3:]])
    hidden = model.backbone(input_ids=echoed).last_hidden_state
    reference = model.head(hidden).squeeze(-1)[0]
    out = model(torch.tensor([ids]), response_start=[3]).logits[0]
    assert torch.allclose(out[:3], reference[:3], atol=1e-5)
    assert torch.allclose(out[3:], reference[7:], atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_equals_a_hand_built_mask(tokenizer, attn):
    model = tiny_rm("bidirectional", attn=attn)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2]])
    allowed = torch.zeros(7, 7, dtype=torch.bool)
    for q in range(7):
        for k in range(7):
            allowed[q, k] = k <= q or (q >= 3 and k >= 3)
    mask = allowed[None, None]
    if attn == "eager":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    hidden = model.backbone(input_ids=ids, attention_mask=mask,
                            position_ids=torch.arange(7)[None]).last_hidden_state
    reference = model.head(hidden).squeeze(-1)
    assert torch.allclose(model(ids, response_start=[3]).logits, reference, atol=1e-5)


@pytest.mark.parametrize("context", FULL)
def test_save_load_keeps_the_context(tmp_path, tokenizer, context):
    model = tiny_rm(context)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    saved = json.loads((tmp_path / "rm" / REWARD_CONFIG_NAME).read_text())
    assert saved["context"] == context
    loaded = TokenRewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.context == context
    ids, _ = _rows(tokenizer.pad_token_id)
    assert torch.allclose(loaded(ids, response_start=[3, 3]).rewards,
                          model(ids, response_start=[3, 3]).rewards, atol=1e-6)


def test_a_config_saved_before_context_existed_reads_as_causal(tmp_path, tokenizer):
    model = tiny_rm("causal")
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    path = tmp_path / "rm" / REWARD_CONFIG_NAME
    config = json.loads(path.read_text())
    del config["context"]
    path.write_text(json.dumps(config))
    assert TokenRewardModel.from_pretrained(tmp_path / "rm").context == "causal"


# ----------------------------------------------------------------------------- layouts


def _pairs(n: int) -> list[EditPair]:
    return [EditPair(prompt=f"Question {i}: what is {i} plus {i}?",
                     original=f"It is {i}{i} and more words here.",
                     revised=f"It is {2 * i}, more words here.", id=str(i)) for i in range(n)]


def _labeled(tokenizer, n: int = 4):
    labeled, _ = label_pairs(_pairs(n), tokenizer, LabelingConfig(), strict=True)
    return labeled


@pytest.mark.parametrize("context", FULL)
def test_shared_prefix_layout_equals_padded_under_full_context(tokenizer, context):
    model = tiny_rm(context, transform="sigmoid")
    labeled = _labeled(tokenizer)
    dataset = PairDataset(labeled)
    feats = [dataset[i] for i in range(len(dataset))]
    pad = tokenizer.pad_token_id
    padded = RewardPairCollator(pad_token_id=pad)(feats)
    shared = RewardPairCollator(pad_token_id=pad, layout=PairLayout(layout="shared"),
                                context=context)(feats)
    assert "segments" in shared
    a, b = token_outputs(model, padded), token_outputs(model, shared)
    valid = padded["attention_mask"].bool()
    assert torch.allclose(a.logits[valid], b.logits[valid], atol=1e-5)
    # a batch built for another context is refused, not silently misread
    causal_rows = RewardPairCollator(pad_token_id=pad, layout=PairLayout(layout="shared"))(feats)
    with pytest.raises(ValueError, match="context"):
        token_outputs(model, causal_rows)


# ----------------------------------------------------------------------------- consumers


@torch.no_grad()
def _reference_sums(model, tokenizer, prompts, responses) -> list[float]:
    """The full-context reference: each response alone, unpadded, its response_start given."""
    out = []
    for p, r in zip(prompts, responses, strict=True):
        ids, start = encode_example(tokenizer, p, r)
        rewards = model(torch.tensor([ids]), response_start=[start]).rewards[0, start:]
        out.append(float(rewards.sum()))
    return out


@pytest.fixture(scope="module", params=FULL)
def saved_full(request, tmp_path_factory, tokenizer):
    """A saved full-context model whose rewards differ from its causal twin's."""
    context = request.param
    directory = tmp_path_factory.mktemp(context) / "rm"
    tiny_rm(context, transform="sigmoid").save_pretrained(directory, tokenizer=tokenizer)
    return context, directory


PROMPTS = ["Question: where is Paris?", "Question: name a colour."]
RESPONSES = ["Paris is in France, a country.", "Blue."]


def test_every_consumer_honours_the_saved_context(saved_full, tokenizer):
    from editalign.eval import qe
    from editalign.eval.judges import RewardModelJudge
    from editalign.eval.pair_scoring import score_labeled
    from editalign.revise.scorer import reward_model_scorer
    from editalign.train.ppo_rollout import reward_model_source

    context, directory = saved_full
    model = TokenRewardModel.from_pretrained(directory, tokenizer=tokenizer)
    assert model.context == context
    reference = _reference_sums(model, tokenizer, PROMPTS, RESPONSES)
    causal = TokenRewardModel.from_pretrained(directory)
    causal.reward_config.context = "causal"
    causal_sums = _reference_sums(causal, tokenizer, PROMPTS, RESPONSES)
    assert not torch.allclose(torch.tensor(reference), torch.tensor(causal_sums))

    # the winrate reward-model judge
    judge = RewardModelJudge(str(directory), batch_size=2)
    assert judge.scores(PROMPTS, RESPONSES) == pytest.approx(reference, abs=1e-4)
    # the reviser's reward filter
    scorer = reward_model_scorer(str(directory), batch_size=2)
    assert scorer(PROMPTS, RESPONSES) == pytest.approx(reference, abs=1e-4)
    # PPO's dense reward (right-padded batch)
    encoded = [encode_example(tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for b, (row, _) in enumerate(encoded):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    dense = reward_model_source(model)(ids, mask, torch.tensor([s for _, s in encoded]))
    assert dense.sum(-1).tolist() == pytest.approx(reference, abs=1e-4)
    # editalign score / the pair scorer, and eval qe's MT rewards (both sides = the response)
    pairs = [EditPair(prompt=p, original=r, revised=r, id=str(i))
             for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True))]
    labeled, _ = label_pairs(pairs, tokenizer, LabelingConfig(), strict=True)
    scored = score_labeled(model, labeled, tokenizer.pad_token_id, batch_size=2)
    assert [float(s.original_rewards.sum()) for s in scored] == pytest.approx(reference, abs=1e-4)
    mts = qe.mt_rewards(model, labeled, tokenizer.pad_token_id, batch_size=2)
    assert [float(r.sum()) for r in mts] == pytest.approx(reference, abs=1e-4)


def test_train_token_rm_cli_saves_the_context_and_trains_shared(tmp_path, tokenizer):
    from editalign.train.reward import run_token_rm

    data = tmp_path / "pairs.jsonl"
    with data.open("w") as f:
        for pair in _pairs(6):
            f.write(json.dumps({"prompt": pair.prompt, "original": pair.original,
                                "revised": pair.revised}) + "\n")
    out = tmp_path / "rm"
    code = run_token_rm(["--model", "tiny", "--data", str(data), "--output_dir", str(out),
                         "--context", "bidirectional", "--pair_layout", "shared",
                         "--max_steps", "2", "--per_device_train_batch_size", "2",
                         "--use_cpu", "--report_to", "none", "--save_strategy", "no",
                         "--eval_size", "2", "--eval_strategy", "steps", "--eval_steps", "2"])
    assert code == 0
    assert json.loads((out / REWARD_CONFIG_NAME).read_text())["context"] == "bidirectional"


# ----------------------------------------------------------------------------- encoders


def test_encoder_backbone_reads_everything_and_trains_padded(tmp_path, tokenizer):
    from editalign.train.reward import RewardConfig, RewardTrainer

    model = tiny_bert(len(tokenizer))
    assert not model.causal_backbone and model.context == "bidirectional"
    ids, _ = _rows(tokenizer.pad_token_id)
    out = model(ids).rewards  # an encoder needs no response_start
    assert ((out[0] - out[1]).abs() > 1e-6).all()  # even the prompt reads the response
    with pytest.raises(ValueError, match="encoder"):
        TokenRewardModel(model.backbone, RewardModelConfig(context="echo"))
    config = RewardConfig(output_dir=str(tmp_path / "bert"), use_cpu=True, save_strategy="no",
                          report_to="none", max_steps=2, per_device_train_batch_size=2,
                          pair_layout="shared", disable_tqdm=True)
    trainer = RewardTrainer(model.train(), config, train_dataset=_labeled(tokenizer),
                            processing_class=tokenizer)
    assert trainer.pair_layout.layout == "padded"  # an encoder cannot share a prefix
    assert "encoder" in trainer.pair_layout.fallback_reason
    before = model.head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, model.head.weight)
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    loaded = TokenRewardModel.from_pretrained(tmp_path / "saved")
    assert loaded.context == "bidirectional" and not loaded.causal_backbone
    assert torch.allclose(loaded(ids).rewards, model.eval()(ids).rewards, atol=1e-5)


# ----------------------------------------------------------------------------- frozen layers


@pytest.mark.parametrize("context", ["causal", *FULL])
def test_cached_frozen_training_equals_recomputing_them(tmp_path, tokenizer, monkeypatch,
                                                        context):
    """--freeze_layers with the cache gives the losses and weights of the same frozen run
    that recomputes the lower layers every step (float32 cache: exact up to float error)."""
    from editalign.train import frozen
    from editalign.train.reward import RewardConfig, RewardTrainer

    monkeypatch.setattr(frozen, "CACHE_DTYPE", torch.float32)
    runs = {}
    for cache in (True, False):
        model = tiny_rm(context, transform="sigmoid").train()
        config = RewardConfig(output_dir=str(tmp_path / str(cache)), use_cpu=True,
                              save_strategy="no", report_to="none", max_steps=3, seed=0,
                              per_device_train_batch_size=2, pair_layout="shared",
                              freeze_layers=1, cache_frozen=cache, logging_steps=1,
                              disable_tqdm=True, equal_weight=0.5)
        trainer = RewardTrainer(model, config, train_dataset=_labeled(tokenizer, 6),
                                processing_class=tokenizer)
        assert isinstance(trainer.train_dataset, frozen.CachedPairs) == cache
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs[cache] = (losses, {k: v.detach().clone() for k, v in model.state_dict().items()})
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    stack = frozen.decoder_stack(model.backbone)
    assert len(stack.layers) == 2  # restored after training (the slice lasts one step)
    for name, value in runs[True][1].items():
        assert torch.allclose(value, runs[False][1][name], atol=1e-5), name
    # the lowest layer and the embeddings never moved; the top layer and the head did
    fresh = tiny_rm(context, transform="sigmoid").state_dict()
    trained = runs[True][1]
    assert torch.equal(trained["backbone.layers.0.self_attn.q_proj.weight"],
                       fresh["backbone.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(trained["backbone.embed_tokens.weight"], fresh["backbone.embed_tokens.weight"])
    top = f"backbone.layers.{len(stack.layers) - 1}.mlp.up_proj.weight"
    assert not torch.equal(trained[top], fresh[top])


def test_keep_and_freeze_layers_from_the_cli(tmp_path, tokenizer):
    from editalign.train.reward import run_token_rm

    data = tmp_path / "pairs.jsonl"
    with data.open("w") as f:
        for pair in _pairs(6):
            f.write(json.dumps({"prompt": pair.prompt, "original": pair.original,
                                "revised": pair.revised}) + "\n")
    out = tmp_path / "rm"
    n_layers = AutoModel.from_pretrained(resolve_model_path("tiny")).config.num_hidden_layers
    assert n_layers == 2  # the tiny model: keep both, freeze the lower one
    code = run_token_rm(["--model", "tiny", "--data", str(data), "--output_dir", str(out),
                         "--keep_layers", "2", "--freeze_layers", "1",
                         "--context", "echo", "--pair_layout", "shared", "--max_steps", "2",
                         "--per_device_train_batch_size", "2", "--use_cpu", "--report_to",
                         "none", "--save_strategy", "no"])
    assert code == 0
    saved = TokenRewardModel.from_pretrained(out)
    assert saved.context == "echo"
    # --keep_layers cuts the model for good, the config too (what the saved model reloads)
    from editalign.train.frozen import truncate_layers

    truncate_layers(saved.backbone, 1)
    assert saved.backbone.config.num_hidden_layers == len(saved.backbone.layers) == 1
    saved.save_pretrained(tmp_path / "cut", tokenizer=tokenizer)
    assert len(TokenRewardModel.from_pretrained(tmp_path / "cut").backbone.layers) == 1
    with pytest.raises(ValueError, match="keep_layers"):
        truncate_layers(saved.backbone, 5)


# ----------------------------------------------------------------------------- other decoders


def tiny_gemma3(vocab: int, context: str) -> TokenRewardModel:
    """A random 4-layer Gemma 3 text model (sliding and full attention layers, the
    architecture of gemma3-270m), built here: no download."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, sliding_window=4, max_position_embeddings=128,
                              layer_types=["sliding_attention", "full_attention"] * 2,
                              attn_implementation="sdpa")
    return TokenRewardModel(Gemma3TextModel(config), RewardModelConfig(context=context)).eval()


@pytest.mark.parametrize("context", ["causal", *FULL])
def test_gemma3_decoder_contexts_layouts_and_frozen_cache(tmp_path, tokenizer, monkeypatch,
                                                          context):
    from editalign.train import frozen
    from editalign.train.reward import RewardConfig, RewardTrainer

    model = tiny_gemma3(len(tokenizer), context)
    assert model.causal_backbone and model.context == context
    labeled = _labeled(tokenizer)
    dataset = PairDataset(labeled)
    feats = [dataset[i] for i in range(len(dataset))]
    pad = tokenizer.pad_token_id
    padded = RewardPairCollator(pad_token_id=pad)(feats)
    shared = RewardPairCollator(pad_token_id=pad, layout=PairLayout(layout="shared"),
                                context=context)(feats)
    a, b = token_outputs(model, padded), token_outputs(model, shared)
    valid = padded["attention_mask"].bool()
    assert torch.allclose(a.logits[valid], b.logits[valid], atol=1e-5)
    # the cached frozen part + the top slice (layer kinds sliced with it) = the whole model
    monkeypatch.setattr(frozen, "CACHE_DTYPE", torch.float32)
    collator = RewardPairCollator(pad_token_id=pad, layout=PairLayout(layout="shared"),
                                  context=context)
    hidden = frozen.cache_frozen(model, dataset, collator, n_frozen=3)
    batch = frozen.CachedCollator(collator, torch.float32)(
        [frozen.CachedPairs(dataset, hidden)[i] for i in range(len(dataset))])
    with frozen.layer_slice(model.backbone, 3):
        top = token_outputs(model, batch)
    assert model.backbone.config.layer_types == ["sliding_attention", "full_attention"] * 2
    assert torch.allclose(top.logits[valid], a.logits[valid], atol=1e-5)
    config = RewardConfig(output_dir=str(tmp_path / "g"), use_cpu=True, save_strategy="no",
                          report_to="none", max_steps=2, per_device_train_batch_size=2,
                          pair_layout="shared", freeze_layers=2, disable_tqdm=True)
    trainer = RewardTrainer(model.train(), config, train_dataset=labeled,
                            processing_class=tokenizer)
    assert isinstance(trainer.train_dataset, frozen.CachedPairs)
    trainer.train()
