"""Do token rewards trained on human edits find the human error spans? (issue 4, item 4)

The QA-Feedback pairs (/work/shared/data/qa-feedback, 290 usable) are split once (seed 0)
into train and held-out pairs; a SmolLM2-135M reward model is trained with each objective,
and on the held-out originals its token rewards are compared with the tokens people
marked as errors (``human_auroc``/``human_f1``) and with the edit labels (``token_auroc``).
References on the same tokens: random scores, the untrained model (fresh head), and the
edit labels themselves used as scores (an oracle that has seen the edit).

CPU budget (2 shared cores): by default the prompt is the question only (the passages,
median ~700 tokens, would make every step ~7x longer; ``--prompt full`` keeps them), and
the backbone is frozen (``--mode cached``): it runs once over all pairs, its output is
cached, and only the final norm, the head and optionally the top ``--top-layers`` layers
train on the cache, so every objective costs seconds to minutes. ``--mode trainer`` trains
the whole model (or LoRA with ``--lora-r``) through ``RewardTrainer``, for machines with
the compute.

    python benchmarks/reward_qa_feedback.py [--objectives token_cls,edit_bt,seq_bt,seq_bt_last]
        [--epochs 10] [--lr 1e-3] [--mode cached|trainer] [--top-layers 0] [--keep-models DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, write_result
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import load_pairs
from editalign.eval.pair_scoring import batch_pair_rewards, human_bad
from editalign.eval.reward_metrics import auroc, best_f1, reward_metrics
from editalign.losses import reward_model_loss, token_rewards
from editalign.models import load_tokenizer
from editalign.reward_model import TokenRewardModel
from editalign.train.common import ModelArguments
from editalign.train.frozen import truncate_layers
from editalign.train.reward import RewardConfig, RewardTrainer

DATA = "../shared/data/qa-feedback/feedback.json"  # relative to the repository root
_BAD = (3, 2)  # deleted, substituted


def load_split(model: str, prompt: str, n_eval: int, max_length: int):
    pairs, _ = load_pairs(DATA, preset="qa-feedback")
    if prompt == "question":
        pairs = [replace(p, prompt=p.prompt.split("\n\nPassages:")[0] + "\nAnswer: ")
                 for p in pairs]
    tokenizer = load_tokenizer(model)
    labeled, stats = label_pairs(pairs, tokenizer, LabelingConfig(max_length=max_length,
                                                                   truncation="keep_end"))
    labeled = [lp for lp in labeled if lp.meta.get("error_spans") is not None]
    order = list(range(len(labeled)))
    random.Random(0).shuffle(order)
    held = set(order[:n_eval])
    train = [lp for i, lp in enumerate(labeled) if i not in held]
    evaluation = [lp for i, lp in enumerate(labeled) if i in held]
    return tokenizer, train, evaluation, stats


def reference_rows(evaluation, seeds: int = 20) -> dict[str, dict[str, float]]:
    """Random scores (mean over ``seeds`` draws) and the edit labels as scores, on the
    held-out original tokens (EOS excluded)."""
    truth, oracle, edit_bad = [], [], []
    for lp in evaluation:
        hb = human_bad(lp)
        labels = np.asarray(lp.original.response_labels[: len(hb)])
        truth.append(hb)
        oracle.append(np.isin(labels, _BAD).astype(float))
        edit_bad.append(np.isin(labels, _BAD))
    truth_a, oracle_a, edit_a = (np.concatenate(x) for x in (truth, oracle, edit_bad))
    random_rows = []
    for seed in range(seeds):
        rand = np.random.default_rng(seed).random(len(truth_a))
        random_rows.append({"human_auroc": auroc(rand, truth_a),
                            "human_f1": best_f1(rand, truth_a)[0],
                            "token_auroc": auroc(rand, edit_a),
                            "token_f1": best_f1(rand, edit_a)[0]})
    rows = {"random scores": {k: float(np.mean([r[k] for r in random_rows]))
                              for k in random_rows[0]},
            "edit labels (oracle)": {"human_auroc": auroc(oracle_a, truth_a),
                                     "human_f1": best_f1(oracle_a, truth_a)[0],
                                     "token_auroc": 1.0, "token_f1": 1.0}}
    rows["random scores"]["seeds"] = seeds
    rows["random scores"]["human_auroc_sd"] = float(np.std([r["human_auroc"]
                                                            for r in random_rows]))
    rows["human_bad_rate"] = {"value": float(truth_a.mean()), "tokens": len(truth_a)}
    return rows


# ----------------------------------------------------------------------------- cached features


def _layers(backbone, h, layers):
    """Run decoder ``layers`` on right-padded hidden states (causal attention needs no mask:
    real tokens never see the padding after them)."""
    pos = torch.arange(h.size(1))[None].expand(h.size(0), -1)
    pe = backbone.rotary_emb(h, pos)
    for layer in layers:
        h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
    return h


@torch.no_grad()
def cache_features(backbone, pairs, n_frozen: int, batch: int = 8) -> dict:
    """Output of the first ``n_frozen`` layers for every side of every pair (unpadded)."""
    seqs = [(i, name, getattr(lp, name).input_ids) for i, lp in enumerate(pairs)
            for name in ("revised", "original")]
    seqs.sort(key=lambda s: len(s[2]))
    out = {}
    for k in range(0, len(seqs), batch):
        chunk = seqs[k:k + batch]
        width = max(len(s[2]) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, _, x) in enumerate(chunk):
            ids[row, : len(x)] = torch.as_tensor(x)
        h = _layers(backbone, backbone.embed_tokens(ids), backbone.layers[:n_frozen])
        for row, (i, name, x) in enumerate(chunk):
            out[(i, name)] = h[row, : len(x)].clone()
    return out


class TopReward(torch.nn.Module):
    """The trainable top of a TokenRewardModel: the last layers, the final norm, the head."""

    def __init__(self, backbone, n_frozen: int, head):
        super().__init__()
        import copy

        self.backbone = backbone  # only for its rotary embedding (no parameters of its own)
        self.layers = torch.nn.ModuleList(copy.deepcopy(list(backbone.layers[n_frozen:])))
        self.norm = copy.deepcopy(backbone.norm)
        self.head = head

    def forward(self, h):
        return self.head(self.norm(_layers(self.backbone, h, self.layers))).squeeze(-1)


def _batch(features, pairs, idx):
    rows = [features[(i, "revised")] for i in idx] + [features[(i, "original")] for i in idx]
    labels = [pairs[i].revised.labels for i in idx] + [pairs[i].original.labels for i in idx]
    width = max(len(r) for r in rows)
    h = torch.zeros((len(rows), width, rows[0].size(-1)))
    edit = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (x, lab) in enumerate(zip(rows, labels, strict=True)):
        h[r, : len(x)] = x
        edit[r, : len(lab)] = torch.as_tensor(lab)
    return h, edit


def run_cached(objective, epochs, args, base, n_frozen, train, evaluation, feats, tokenizer):
    config = RewardConfig(output_dir="unused", objective=objective.replace("+", ","),
                          equal_weight=args.equal_weight)
    objectives, transform = config.objectives(), config.model_config().transform
    torch.manual_seed(0)
    rm = TokenRewardModel(base.backbone, config.model_config())  # fresh seeded head
    top = TopReward(base.backbone, n_frozen, rm.head)
    opt = torch.optim.AdamW([p for n, p in top.named_parameters()
                             if not n.startswith("backbone.")], lr=args.lr)
    rng = random.Random(0)
    order = list(range(len(train)))
    log, tokens = [], 0
    start = time.perf_counter()
    for epoch in range(int(epochs)):
        rng.shuffle(order)
        for k in range(0, len(order), args.batch_size):
            idx = order[k:k + args.batch_size]
            h, edit = _batch(feats["train"], train, idx)
            loss, _ = reward_model_loss(top(h), edit, objectives, transform=transform,
                                        equal_weight=args.equal_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tokens += int((edit != -100).sum())
            log.append(float(loss.detach()))
        print(f"  epoch {epoch + 1}: mean loss {np.mean(log[-len(order) // args.batch_size:]):.4f}"
              f" ({time.perf_counter() - start:.0f} s)", flush=True)
    train_s = time.perf_counter() - start
    results, losses = [], []
    with torch.no_grad():
        for k in range(0, len(evaluation), 8):
            idx = list(range(k, min(k + 8, len(evaluation))))
            h, edit = _batch(feats["eval"], evaluation, idx)
            logits = top(h)
            losses.append(float(reward_model_loss(logits, edit, objectives, transform=transform,
                                                  equal_weight=args.equal_weight)[0]))
            results += batch_pair_rewards(logits, token_rewards(logits, transform), edit,
                                          [evaluation[i] for i in idx])
    metrics = reward_metrics(results)
    metrics.update(eval_loss=float(np.mean(losses)), train_seconds=train_s,
                   train_response_tokens=tokens,
                   train_loss_per_epoch=[float(np.mean(c)) for c in np.array_split(
                       np.asarray(log), max(int(epochs), 1))] if log else [])
    if args.keep_models and epochs > 0:
        import copy

        backbone = copy.deepcopy(base.backbone)
        for i, layer in enumerate(top.layers):
            backbone.layers[n_frozen + i].load_state_dict(layer.state_dict())
        backbone.norm.load_state_dict(top.norm.state_dict())
        saved = TokenRewardModel(backbone, rm.reward_config)
        saved.head.load_state_dict(top.head.state_dict())
        saved.reward_config.base_model = args.model
        saved.reward_config.tokenizer_fingerprint = base.reward_config.tokenizer_fingerprint
        saved.save_pretrained(Path(args.keep_models) / objective, tokenizer=tokenizer)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objectives", default="token_cls,edit_bt,seq_bt,seq_bt_last",
                    help="comma-separated; a mix is written with '+', e.g. token_cls=1+edit_bt=1")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--mode", choices=["cached", "trainer"], default="cached",
                    help="cached: freeze the lower layers and cache their output once; "
                    "trainer: train the whole model (or LoRA) through RewardTrainer")
    ap.add_argument("--top-layers", type=int, default=0,
                    help="cached mode: transformer layers trained on top of the cache "
                    "(0: only the final norm and the head)")
    ap.add_argument("--lora-r", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--equal-weight", type=float, default=0.0)
    ap.add_argument("--prompt", choices=["question", "full"], default="question")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--name", default="reward_qa_feedback")
    ap.add_argument("--context", default="causal",
                    help="trainer mode: what each token's reward reads (train token-rm --context: "
                    "causal, echo, bidirectional)")
    ap.add_argument("--freeze-layers", type=int, default=0,
                    help="trainer mode: train token-rm --freeze_layers (the lowest N layers "
                    "frozen, their outputs cached; shared-prefix layout)")
    ap.add_argument("--keep-layers", type=int, default=0,
                    help="trainer mode: train token-rm --keep_layers (0: all layers)")
    ap.add_argument("--keep-models", help="directory to save each trained reward model in")
    args = ap.parse_args()
    torch.manual_seed(0)

    tokenizer, train, evaluation, _ = load_split(args.model, args.prompt, args.n_eval,
                                                 args.max_length)
    print(f"{len(train)} train pairs, {len(evaluation)} held-out pairs")
    result: dict = {
        "settings": {**vars(args), "train_pairs": len(train), "eval_pairs": len(evaluation),
                     "train_tokens_per_epoch": sum(len(lp.original.input_ids)
                                                   + len(lp.revised.input_ids) for lp in train)},
        "references": reference_rows(evaluation),
        "objectives": {},
    }
    model_args = ModelArguments(model=args.model, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)

    def run(objective: str, epochs: float) -> dict:
        config = RewardConfig(
            output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ea-rm-qa"),
            objective=objective.replace("+", ","), equal_weight=args.equal_weight,
            num_train_epochs=epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=8, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, use_cpu=True, save_strategy="no", eval_strategy="no",
            logging_steps=10, seed=0, disable_tqdm=True, max_steps=-1 if epochs > 0 else 0,
            context=args.context, freeze_layers=args.freeze_layers if epochs > 0 else 0,
            pair_layout="shared" if args.freeze_layers else "padded")
        torch.manual_seed(0)  # the head
        model = TokenRewardModel.from_backbone(
            args.model, config.model_config(),
            peft_config=model_args.peft_config("FEATURE_EXTRACTION"), tokenizer=tokenizer)
        if args.keep_layers:
            truncate_layers(model.backbone, args.keep_layers)
        trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=evaluation,
                                processing_class=tokenizer)
        start = time.perf_counter()
        if epochs > 0:
            trainer.train()
        train_s = time.perf_counter() - start
        results, loss = trainer.score_pairs(evaluation)
        metrics = reward_metrics(results)
        metrics.update(eval_loss=loss, train_seconds=train_s,
                       train_tokens=trainer.train_tokens,
                       train_log=[h for h in trainer.state.log_history if "loss" in h])
        if args.keep_models and epochs > 0:
            trainer.save_model(str(Path(args.keep_models) / objective))
        return metrics

    if args.mode == "cached":
        base = TokenRewardModel.from_backbone(args.model, tokenizer=tokenizer).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        n_frozen = len(base.backbone.layers) - args.top_layers
        start = time.perf_counter()
        feats = {"train": cache_features(base.backbone, train, n_frozen),
                 "eval": cache_features(base.backbone, evaluation, n_frozen)}
        result["settings"]["cache_seconds"] = time.perf_counter() - start
        print(f"cached layer-{n_frozen} features in {time.perf_counter() - start:.0f} s",
              flush=True)

        def run(objective: str, epochs: float) -> dict:
            return run_cached(objective, epochs, args, base, n_frozen, train, evaluation,
                              feats, tokenizer)

    result["objectives"]["untrained (seq_bt_last head)"] = run("seq_bt_last", 0)
    write_result(args.name, result)
    for objective in args.objectives.split(","):
        print(f"== {objective} ==", flush=True)
        result["objectives"][objective] = run(objective, args.epochs)
        m = result["objectives"][objective]
        print({k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, flush=True)
        write_result(args.name, result)
    (RESULTS / f"{args.name}.md").write_text(markdown_table(result))
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"QA-Feedback, {s['train_pairs']} train / {s['eval_pairs']} held-out pairs, "
        f"{s['model']} ({_trained(s)}), "
        f"{s['epochs']} epochs, lr {s['lr']}, batch {s['batch_size']} pairs, prompt: {s['prompt']}. "
        f"Human-bad share of held-out original tokens: "
        f"{result['references']['human_bad_rate']['value']:.3f}.",
        "",
        "| scores | human AUROC | human F1 | edit-label AUROC | edit-label F1 | "
        "pairwise acc (sum) | pairwise acc (last) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refs = result["references"]
    for name in ("random scores", "edit labels (oracle)"):
        r = refs[name]
        label = f"{name} (mean of {r['seeds']} draws)" if "seeds" in r else name
        lines.append(f"| {label} | {r['human_auroc']:.3f} | {r['human_f1']:.3f} | "
                     f"{r['token_auroc']:.3f} | {r['token_f1']:.3f} | | | |")
    for name, m in result["objectives"].items():
        lines.append(
            f"| {name} | {m['human_auroc']:.3f} | {m['human_f1']:.3f} | {m['token_auroc']:.3f} | "
            f"{m['token_f1']:.3f} | {m['pairwise_accuracy_sum']:.3f} | "
            f"{m['pairwise_accuracy_last']:.3f} | {m['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _trained(s: dict) -> str:
    if s.get("mode") == "cached":
        top = f"top {s['top_layers']} layers + " if s["top_layers"] else ""
        return f"frozen backbone, {top}final norm + head trained"
    kept = f"first {s['keep_layers']} layers, " if s.get("keep_layers") else ""
    if s.get("freeze_layers"):
        return f"{kept}lowest {s['freeze_layers']} frozen (cached), the rest + head trained"
    return kept + (f"LoRA r={s['lora_r']}" if s["lora_r"] else "full fine-tuning")


if __name__ == "__main__":
    main()
