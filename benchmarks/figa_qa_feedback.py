"""FIGA vs SFT on SmolLM2-135M with the real QA-Feedback human edits (issue 3, item 6).

Both methods start from SmolLM2-135M-Instruct, see the same pairs in the same order with
the same optimiser, learning rate, batch size and number of steps; SFT is TRL's
SFTTrainer on the revised responses. On held-out pairs we measure the mean
log-probability of the revised response's good tokens A(ỹ) (added/substituted) and of
the original's bad tokens D(ŷ) (deleted/substituted), before and after training.

To fit a shared 2-core CPU the prompt is the question alone (the grounding passages,
~700 tokens, are dropped), which keeps every side near 100 tokens.

    python benchmarks/figa_qa_feedback.py [--steps 30] [--batch 4] [--lr 2e-5]

Writes results/figa_qa_feedback.json and results/figa_qa_feedback.png.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from _common import RESULTS, write_result
from editalign.batching.lm import PairCollator, pair_features
from editalign.data.align import IGNORE, Label
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import load_pairs
from editalign.models import load_model, load_tokenizer
from editalign.train.baselines import sft_dataset
from editalign.train.figa import FIGAConfig, FIGATrainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa-feedback" / "feedback.json"
MODEL = "smollm2-135m"


def held_out_logps(model, pairs, tok, batch_size=8):
    """Mean log p over A(ỹ) (added/substituted revised tokens), D(ŷ) (deleted/substituted
    original tokens) and all revised response tokens, on ``pairs``."""
    collate = PairCollator(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    features, _ = pair_features(pairs)
    sums = {"added": [0.0, 0], "deleted": [0.0, 0], "revised_all": [0.0, 0]}
    model.eval()
    for i in range(0, len(features), batch_size):
        b = collate(features[i:i + batch_size])
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        targets = torch.cat([b["input_ids"][:, 1:], b["input_ids"][:, :1]], dim=1)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
        lab, rev = b["edit_labels"], b["revised"]
        changed = (lab == Label.ADDED) | (lab == Label.SUBSTITUTED) | (lab == Label.DELETED)
        for name, mask in (("added", rev & changed), ("deleted", ~rev & changed),
                           ("revised_all", rev & (lab != IGNORE))):
            sums[name][0] += logp[mask].sum().item()
            sums[name][1] += int(mask.sum())
    return {k: s / max(n, 1) for k, (s, n) in sums.items()} | {
        "tokens": {k: n for k, (_, n) in sums.items()}}


def train_figa(train, tok, args, out):
    config = FIGAConfig(output_dir=out, use_cpu=True, report_to="none", max_steps=args.steps,
                        per_device_train_batch_size=args.batch, learning_rate=args.lr,
                        logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    trainer = FIGATrainer(model=load_model(MODEL), args=config, train_dataset=train,
                          processing_class=tok)
    started = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - started


def train_sft(train, tok, args, out):
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(output_dir=out, use_cpu=True, bf16=False, gradient_checkpointing=False,
                       report_to="none", max_steps=args.steps, max_length=None,
                       per_device_train_batch_size=args.batch, learning_rate=args.lr,
                       lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                       seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=load_model(MODEL), args=config, train_dataset=sft_dataset(train),
                         processing_class=tok)
    started = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - started


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("figa", "sft"):
        ax1.plot(result[name]["loss_curve"], label=f"{name.upper()} training loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (per weighted token)")
    ax1.set_title("Training loss, SmolLM2-135M, QA-Feedback")
    ax1.legend()
    names = ["added", "deleted"]
    x = range(len(names))
    for k, name in enumerate(("figa", "sft")):
        deltas = [result[name]["delta"][n] for n in names]
        ax2.bar([i + 0.38 * k for i in x], deltas, width=0.38, label=name.upper())
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_xticks([i + 0.19 for i in x], ["A(ỹ): added/substituted", "D(ŷ): deleted/substituted"])
    ax2.set_ylabel("Δ mean log p on 50 held-out pairs")
    ax2.set_title("Change of held-out token log-probabilities")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--eval-pairs", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)

    tok = load_tokenizer(MODEL)
    pairs, report = load_pairs(str(DATA), preset="qa-feedback")
    for p in pairs:  # the question alone: see the module docstring
        p.prompt = p.prompt.split("\n\nPassages:")[0]
    labeled, _ = label_pairs(pairs, tok, LabelingConfig(max_length=args.max_length))
    labeled = [lp for lp in labeled if lp.edit_distance > 0]
    order = list(range(len(labeled)))
    random.Random(0).shuffle(order)
    held = [labeled[i] for i in order[: args.eval_pairs]]
    train = [labeled[i] for i in order[args.eval_pairs:]]
    print(f"{len(train)} train pairs, {len(held)} held-out pairs")

    base = held_out_logps(load_model(MODEL), held, tok)
    print("base", base)
    result = {"model": MODEL, "data": "QA-Feedback (shared/data/qa-feedback, question-only "
              "prompts)", "load": report.summary(), "train_pairs": len(train),
              "held_out_pairs": len(held), "settings": vars(args), "base": base}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("figa", train_figa), ("sft", train_sft)):
            trainer, seconds = fn(train, tok, args, f"{tmp}/{name}")
            after = held_out_logps(trainer.model, held, tok)
            result[name] = {
                "train_seconds": round(seconds, 1),
                "loss_curve": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                "held_out": after,
                "delta": {k: after[k] - base[k] for k in ("added", "deleted", "revised_all")},
            }
            print(name, result[name]["delta"], f"{seconds:.0f} s", flush=True)
            del trainer
    for name in ("figa", "sft"):
        d = result[name]["delta"]
        result[name]["margin_gain"] = d["added"] - d["deleted"]
    write_result("figa_qa_feedback", result)
    plot(result, RESULTS / "figa_qa_feedback.png")


if __name__ == "__main__":
    main()
