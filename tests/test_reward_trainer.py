"""RewardTrainer on the tiny model: a planted token rule, metrics at evaluation, TRL parity."""

import random

import datasets
import pytest
import torch

from editalign.batching.tokens import RewardPairCollator
from editalign.data.align import IGNORE, align
from editalign.data.labeling import LabeledPair, TokenizedSide
from editalign.losses import reward_model_loss
from editalign.models import build_tiny_tokenizer, load_tokenizer, resolve_model_path
from editalign.reward_model import TokenizerMismatchError, TokenRewardModel
from editalign.train.reward import RewardConfig, RewardTrainer

BAD = ord("B")  # the planted rule: this token id is always the bad one
GOOD = list(range(ord("a"), ord("z") + 1))


def planted_pairs(n, seed, bos, eos):
    """Pairs whose original has 1-3 copies of BAD (replaced or inserted); the revision removes
    them. Built from token ids; labels from the real aligner."""
    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        prompt = [bos] + [rng.choice(GOOD) for _ in range(rng.randint(3, 6))]
        revised = [rng.choice(GOOD) for _ in range(rng.randint(8, 14))]
        original = list(revised)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(original))
            if rng.random() < 0.5:
                original[pos] = BAD
            else:
                original.insert(pos, BAD)
        a = align(original, revised)

        def side(response, labels, prompt=prompt):
            ids = prompt + response + [eos]
            return TokenizedSide(ids, [IGNORE] * len(prompt) + labels + [0], len(prompt),
                                 [(0, 0)] * (len(response) + 1))

        pairs.append(LabeledPair(str(k), "", "", "", side(original, a.original_labels),
                                 side(revised, a.revised_labels), a.distance))
    return pairs


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def data(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return planted_pairs(200, 0, bos, eos), planted_pairs(40, 1, bos, eos)


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "rm"), per_device_train_batch_size=8,
                learning_rate=3e-3, use_cpu=True, save_strategy="no", seed=0,
                disable_tqdm=True, logging_steps=50, report_to="none")
    return RewardConfig(**{**base, **kw})


@pytest.mark.parametrize("objective", ["token_cls", "edit_bt"])
def test_tiny_model_learns_a_planted_token_rule(tmp_path, tokenizer, data, objective):
    train, held = data
    config = _config(tmp_path, objective=objective, max_steps=80, eval_strategy="steps",
                     eval_steps=40)
    # A random head can already rank the planted token well by chance (AUROC 0.88 seen), so
    # start from a zero head (every reward equal: AUROC 0.5) to measure what training learns;
    # seeded so the run does not depend on which tests ran earlier in this process.
    torch.manual_seed(0)
    model = TokenRewardModel.from_backbone("tiny", config.model_config(), tokenizer=tokenizer)
    torch.nn.init.zeros_(model.head.weight)
    trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=held,
                            processing_class=tokenizer)
    before = trainer.evaluate()
    assert before["eval_token_auroc"] == pytest.approx(0.5)  # nothing known before training
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_token_auroc" in h]
    assert len(evals) == 2  # every evaluation (steps 40 and 80) reports the reward metrics
    after = evals[-1]
    assert after["eval_token_auroc"] > 0.95
    assert after["eval_pairwise_accuracy_edit"] > 0.9
    assert {"eval_token_f1", "eval_edit_auroc", "eval_calibration_pair_confidence",
            "eval_calibration_mean_reward_original_deleted"} <= set(after)
    # the bad token gets the lowest reward wherever it stands
    out = trainer.score_pairs(held[:5])[0]
    for p in out:
        assert p.original_rewards[:-1].min() < p.revised_rewards.min()


def test_saved_model_scores_like_the_trained_one(tmp_path, tokenizer, data):
    train, held = data
    config = _config(tmp_path, objective="token_cls=1,edit_bt=0.5", max_steps=5,
                     equal_weight=0.1)
    model = TokenRewardModel.from_backbone("tiny", config.model_config(), tokenizer=tokenizer)
    trainer = RewardTrainer(model, config, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = TokenRewardModel.from_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    batch = RewardPairCollator(tokenizer.pad_token_id)(
        [{"revised_input_ids": p.revised.input_ids, "revised_labels": p.revised.labels,
          "original_input_ids": p.original.input_ids, "original_labels": p.original.labels}
         for p in held[:4]])
    model.eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).rewards
        b = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).rewards
    assert torch.equal(a, b)
    assert loaded.reward_config.objectives == {"token_cls": 1.0, "edit_bt": 0.5}


def test_trainer_refuses_a_mismatched_tokenizer(tmp_path, tokenizer, data):
    model = TokenRewardModel.from_backbone("tiny", tokenizer=tokenizer)
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(TokenizerMismatchError):
        RewardTrainer(model, _config(tmp_path), train_dataset=data[0], processing_class=other)


@pytest.mark.parametrize("center", [None, 0.01])
def test_seq_bt_last_equals_trl_reward_trainer_loss(tmp_path, tokenizer, data, center):
    """Same backbone weights, same head, same batch: TRL's RewardTrainer.compute_loss
    (AutoModelForSequenceClassification, last non-pad token) gives our seq_bt_last loss."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer as TrlRewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    pairs = data[0][:6]
    seq_cls = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("tiny"), num_labels=1, local_files_only=True)
    ours = TokenRewardModel.from_backbone("tiny", tokenizer=tokenizer)
    with torch.no_grad():
        ours.head.weight.copy_(seq_cls.score.weight)  # TRL's score head has no bias
    rows = {"chosen_ids": [p.revised.input_ids for p in pairs],
            "rejected_ids": [p.original.input_ids for p in pairs]}
    trl_args = TrlRewardConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False,
                               gradient_checkpointing=False, report_to="none",
                               center_rewards_coefficient=center)
    trl = TrlRewardTrainer(seq_cls, trl_args, train_dataset=datasets.Dataset.from_dict(rows),
                           processing_class=tokenizer)
    trl_batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(*rows.values(), strict=True)])
    seq_cls.eval()
    with torch.no_grad():
        trl_loss = trl.compute_loss(seq_cls, trl_batch)
    batch = RewardPairCollator(tokenizer.pad_token_id)(
        [{"revised_input_ids": p.revised.input_ids, "revised_labels": p.revised.labels,
          "original_input_ids": p.original.input_ids, "original_labels": p.original.labels}
         for p in pairs])
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])
    ours.eval()
    with torch.no_grad():
        logits = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, _ = reward_model_loss(logits, batch["edit_labels"], {"seq_bt_last": 1.0},
                                transform="identity", center_coefficient=center)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path, tokenizer, data):
    train, held = data
    config = _config(tmp_path, objective="token_cls", max_steps=4, eval_strategy="steps",
                     eval_steps=2, save_strategy="steps", save_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="eval_loss",
                     greater_is_better=True)  # "best" = highest loss: the step-2 checkpoint
    model = TokenRewardModel.from_backbone("tiny", config.model_config(), tokenizer=tokenizer)
    trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=held,
                            processing_class=tokenizer)
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = TokenRewardModel.from_pretrained(trainer.state.best_model_checkpoint)
    for name, value in best.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
