"""FIGATrainer on the tiny model: TRL's SFTTrainer as oracle, learning direction, gradient
accumulation, padding-free packing, checkpoint/resume, LoRA, bad input."""

import math

import pytest
import torch
from transformers import TrainerCallback

from editalign.batching.lm import PairCollator, pair_features
from editalign.data.align import IGNORE, Label
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import EditPair
from editalign.losses import figa_loss
from editalign.models import load_model, load_tokenizer
from editalign.train.figa import FIGAConfig, FIGATrainer

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]


def make_pairs(n=8):
    # Varied lengths so that padding, packing and per-micro-batch counts all matter.
    return [EditPair(prompt=f"Q{i}: what colour is item {i}?" + " Please answer." * (i % 3),
                     original=f"Item {i} is {COLOURS[i % 8]}, I think" + " really" * (i % 4) + ".",
                     revised=f"Item {i} is {COLOURS[(i + 3) % 8]}.", id=str(i))
            for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def pairs(tok):
    labeled, _ = label_pairs(make_pairs(), tok)
    return labeled


def config(tmp_path, **kw):
    base = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none",
            "per_device_train_batch_size": 4, "max_steps": 1, "seed": 0,
            "disable_tqdm": True, "save_strategy": "no", "logging_steps": 1}
    return FIGAConfig(**{**base, **kw})


def trainer(tmp_path, pairs, tok, seed=0, **kw):
    return FIGATrainer(model=load_model(f"tiny:{seed}"), args=config(tmp_path, **kw),
                       train_dataset=pairs, processing_class=tok)


def batch(t, pairs, **collator_kw):
    features, _ = pair_features(pairs)
    collator = t.data_collator if not collator_kw else PairCollator(
        pad_token_id=t.processing_class.pad_token_id,
        eos_token_id=t.processing_class.eos_token_id,
        alpha=t.args.alpha, beta=t.args.beta, gamma=t.args.gamma, **collator_kw)
    return collator(features)


def test_collator_puts_both_sides_in_one_batch_with_shifted_labels(tmp_path, pairs, tok):
    t = trainer(tmp_path, pairs[:2], tok)
    b = batch(t, pairs[:2])
    assert b["input_ids"].shape[0] == 4  # 2 revised rows, then 2 original rows
    real = b["attention_mask"].bool()
    assert torch.equal(b["revised"][:2], real[:2]) and not b["revised"][2:].any()
    lp = pairs[0]
    n = len(lp.revised.input_ids)
    # position t describes token t+1
    assert b["edit_labels"][0, : n - 1].tolist() == lp.revised.labels[1:]
    # exactly one final EOS per side, at the position that predicts it
    assert b["final_eos"].sum(1).tolist() == [1, 1, 1, 1]
    assert b["final_eos"][0, n - 2] and lp.revised.input_ids[-1] == tok.eos_token_id
    # default γ = 0: only A(ỹ) (added/substituted + EOS) and D(ŷ) are scored
    rev = torch.tensor(lp.revised.labels[1:])
    scored = b["shift_labels"][0, : n - 1] != IGNORE
    changed = (rev == Label.ADDED) | (rev == Label.SUBSTITUTED)
    changed[-1] = True
    assert scored.tolist() == changed.tolist()


def test_loss_equals_trl_sft_trainer_at_alpha_gamma_one_beta_zero(tmp_path, pairs, tok):
    from trl import SFTConfig, SFTTrainer

    from editalign.train.baselines import sft_dataset

    figa = trainer(tmp_path, pairs, tok, alpha=1.0, gamma=1.0, beta=0.0)
    sft = SFTTrainer(
        model=load_model("tiny"), processing_class=tok, train_dataset=sft_dataset(pairs),
        args=SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False,
                       report_to="none", per_device_train_batch_size=8,
                       gradient_checkpointing=False, max_length=None))
    sft_batch = sft.data_collator([sft.train_dataset[i] for i in range(len(pairs))])
    with torch.no_grad():
        expected = sft.compute_loss(sft.model, sft_batch)
        got = figa.compute_loss(figa.model, batch(figa, pairs))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 4.5 < got.item() < 6.5  # a random 260-token model: about ln 260 = 5.56


def test_fused_trainer_path_equals_the_pure_loss_on_logits(tmp_path, pairs, tok):
    t = trainer(tmp_path, pairs, tok, gamma=0.3, beta=0.7, gate="none")
    b = batch(t, pairs)
    with torch.no_grad():
        got = t.compute_loss(t.model, dict(b))
        logits = t.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        targets = torch.cat([b["input_ids"][:, 1:], b["input_ids"][:, :1]], dim=1)
        ref = figa_loss(logits, targets, b["edit_labels"], b["revised"], b["final_eos"],
                        alpha=1.0, beta=0.7, gamma=0.3, gate="none")
    assert got.item() == pytest.approx(ref.loss.item(), rel=1e-5)


def token_logp(model, b):
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    targets = torch.cat([b["input_ids"][:, 1:], b["input_ids"][:, :1]], dim=1)
    return logp.gather(-1, targets[..., None])[..., 0]


def test_one_step_raises_added_and_lowers_gated_deleted_log_probs(tmp_path, tok):
    # Revised colours in capitals: the good and bad tokens differ, as real edits' mostly do.
    edits = [EditPair(prompt=f"Q{i}: what colour is item {i}?",
                      original=f"Item {i} is {COLOURS[i % 8]}, i think.",
                      revised=f"Item {i} is {COLOURS[(i + 3) % 8].upper()}.", id=str(i))
             for i in range(8)]
    pairs, _ = label_pairs(edits, tok)
    b = batch(trainer(tmp_path, pairs, tok), pairs)
    lab, rev = b["edit_labels"], b["revised"]
    changed = (lab == Label.SUBSTITUTED) | (lab == Label.ADDED) | (lab == Label.DELETED)
    good, bad = rev & changed, ~rev & changed  # A(ỹ) and D(ŷ) without the EOS
    before = token_logp(load_model("tiny"), b)
    tau = (-before[bad]).median().item()  # about half of D(ŷ) passes the gate ℓ ≤ τ
    gated = bad & (-before <= tau)
    assert 0 < gated.sum() < bad.sum()
    t = trainer(tmp_path, pairs, tok, per_device_train_batch_size=8, learning_rate=1e-3,
                beta=0.5, tau=tau)
    t.train()
    after = token_logp(t.model, b)
    assert after[good].mean() > before[good].mean() + 0.05
    assert after[gated].mean() < before[gated].mean() - 0.05


def test_closed_gate_switches_the_negative_term_off(tmp_path, pairs, tok):
    # A random model gives every token ℓ ≈ 5.5 > τ = 0.6: with gate "le" β has no effect
    # (the same count N, no negative term); with no gate it subtracts β·ℓ on D(ŷ).
    # (the batch carries the static weights: each trainer collates its own)
    with torch.no_grad():
        losses = {(beta, gate): (t := trainer(tmp_path, pairs, tok, beta=beta, gate=gate))
                  .compute_loss(t.model, batch(t, pairs)).item()
                  for beta in (0.5, 0.9) for gate in ("le", "none")}
    assert losses[0.5, "le"] == losses[0.9, "le"]
    assert losses[0.5, "none"] < losses[0.5, "le"] - 1.0
    assert losses[0.9, "none"] < losses[0.5, "none"] - 1.0


@pytest.mark.parametrize("normalize", ["eligible", "active"])
def test_gradient_accumulation_equals_the_whole_batch(tmp_path, pairs, tok, normalize):
    # τ = 5.5 sits inside the random model's loss range, so the gate is partly open.
    common = {"optim": "sgd", "learning_rate": 1.0, "beta": 0.5, "gamma": 0.2, "tau": 5.5,
              "normalize": normalize}
    whole = trainer(tmp_path, pairs, tok, per_device_train_batch_size=8, **common)
    accum = trainer(tmp_path, pairs, tok, per_device_train_batch_size=2,
                    gradient_accumulation_steps=4, **common)
    results = [t.train().training_loss for t in (whole, accum)]
    w, a = whole.model.state_dict(), accum.model.state_dict()
    diff = max((w[k] - a[k]).abs().max().item() for k in w)
    if normalize == "eligible":  # exact: one normaliser over the accumulated batch
        assert results[1] == pytest.approx(results[0], rel=1e-5)
        assert diff < 1e-5
    else:  # per-micro-batch normalisation: the mean of micro-batch losses differs
        assert abs(results[1] - results[0]) > 1e-3 and diff > 1e-4


def test_padding_free_gives_the_same_loss_and_gradients(tmp_path, pairs, tok):
    t = trainer(tmp_path, pairs, tok, gamma=0.5, gate="none")
    padded, packed = batch(t, pairs), batch(t, pairs, padding_free=True)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert (packed["input_ids"] != tok.pad_token_id).all()
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    grads = []
    for b in (padded, packed):
        t.model.zero_grad()
        loss = t.compute_loss(t.model, b)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in t.model.parameters()]))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-4)


class Crash(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("simulated kill")


def test_checkpoint_resume_reaches_the_same_final_loss(tmp_path, pairs, tok):
    kw = {"per_device_train_batch_size": 2, "max_steps": 4, "save_strategy": "steps",
          "save_steps": 2, "learning_rate": 1e-3, "gamma": 0.3}
    full = trainer(tmp_path / "a", pairs, tok, **kw)
    full.train()
    killed = trainer(tmp_path / "b", pairs, tok, **kw)
    killed.add_callback(Crash())
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    ckpt = tmp_path / "b" / "out" / "checkpoint-2"
    assert ckpt.is_dir() and not (tmp_path / "b" / "out" / "checkpoint-4").exists()
    resumed = trainer(tmp_path / "b", pairs, tok, seed=1, **kw)  # other init: weights must load
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (full, resumed)]
    assert losses[1][-1] == pytest.approx(losses[0][-1], rel=1e-4)
    b = batch(full, pairs)
    with torch.no_grad():
        final = [t.compute_loss(t.model, dict(b)).item() for t in (full, resumed)]
    assert final[1] == pytest.approx(final[0], rel=1e-4)


def test_lora_with_gradient_checkpointing_trains_only_adapters(tmp_path, pairs, tok):
    from editalign.train.common import ModelArguments

    model_args = ModelArguments(model="tiny", lora_r=4, lora_alpha=8,
                                lora_target_modules=["q_proj", "v_proj"])
    from editalign.train.cli import load_policy

    args = config(tmp_path, gradient_checkpointing=True, max_steps=2, learning_rate=1e-2)
    model, _ = load_policy(model_args, args)
    before = {k: v.clone() for k, v in model.named_parameters()}
    t = FIGATrainer(model=model, args=args, train_dataset=pairs, processing_class=tok)
    t.train()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)
    assert math.isfinite(t.state.log_history[-1]["train_loss"])


def test_pairs_longer_than_max_length_are_truncated_counted_or_skipped(tok):
    labeled, _ = label_pairs(make_pairs(12), tok, LabelingConfig(max_length=None))
    same = labeled[::3]  # equal prompt lengths
    limit = max(lp.revised.response_start for lp in same) + 3
    features, report = pair_features(same, max_length=limit)
    assert report.kept == 4 and report.truncated_pairs == 4
    assert report.truncated_tokens == sum(len(lp.revised.input_ids) + len(lp.original.input_ids)
                                          - 2 * limit for lp in same)
    assert all(len(f[k]) == limit for f in features for k in f)
    labeled = labeled[:4]
    starts = [max(lp.revised.response_start, lp.original.response_start) for lp in labeled]
    limit = min(starts) + 1  # the pairs with longer prompts lose their whole response
    features, report = pair_features(labeled, max_length=limit)
    gone = sum(s >= limit for s in starts)
    assert 0 < gone < 4 and report.kept == 4 - gone
    assert report.skipped == {"response truncated away (prompt fills max_length)": gone}


def test_unknown_option_value_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown gate 'lt'; allowed: le, band, none"):
        FIGAConfig(output_dir=str(tmp_path), gate="lt")
    with pytest.raises(ValueError, match="allowed: likelihood, unlikelihood"):
        FIGAConfig(output_dir=str(tmp_path), negative="ul")
    with pytest.raises(ValueError, match="allowed: token, word"):
        FIGAConfig(output_dir=str(tmp_path), granularity="phrase")


def test_bf16_autocast_step_runs_and_bf16_defaults_off_on_cpu(tmp_path, pairs, tok):
    assert config(tmp_path).bf16 is False  # no CUDA here: the default stays fp32
    t = trainer(tmp_path, pairs, tok, bf16=True, per_device_train_batch_size=8)
    dtypes = set()
    t.model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda module, args, out: dtypes.add(out.dtype))
    t.train()
    assert dtypes == {torch.bfloat16}  # Trainer's autocast ran the matmuls in bf16
    assert math.isfinite(t.state.log_history[-1]["train_loss"])
    assert next(t.model.parameters()).dtype == torch.float32  # master weights stay fp32
