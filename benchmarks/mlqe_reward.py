"""Token reward models trained on MLQE-PE post-edits, judged as word-level QE (issue 14, item 4).

For each language pair (ro-en first: English MT suits SmolLM2; en-de second), token reward
models are trained on the MLQE-PE train post-edits (``mlqe-pe`` preset, ``space``-granularity
edit labels per space-separated word, the translation prompt carrying the source) with each objective and several
training-set sizes (nested subsets of one fixed shuffle, seed 0). After every epoch the dev
MCC (at its own best threshold) picks the epoch to keep; then ``editalign eval qe``'s
evaluation runs: the BAD threshold is chosen on dev, and test20 is reported with MCC (95%
bootstrap interval over sentences), F1-BAD/OK/MULT, Pearson/Spearman with HTER, beside a
random tagger, all-BAD and the edit-label oracle on the same words. The model reads only
the source and the MT when tagging.

Two ways to train:

- ``--mode cached`` (the CPU default): SmolLM2-135M's lower layers are frozen and run once
  over every pair in the **shared-prefix layout** (one row per pair: [prompt + unedited
  prefix | MT suffix | post-edit suffix], a 4-D mask; see batching/shared_prefix.py); their
  output is cached, and only the top ``--top-layers`` layers, the final norm and the head
  train on the cache (each epoch costs a few top layers instead of the whole model). Dev
  and test MTs are cached the same way (prompt + MT).
- ``--mode trainer``: ``RewardTrainer`` (the code of ``editalign train token-rm``) with
  ``--pair_layout shared``, full fine-tuning or LoRA (``--lora-r``); for a GPU
  (``--device cuda``), where the full grid (7,000 pairs, every objective) takes minutes.

    python benchmarks/mlqe_reward.py [--pairs ro-en,en-de] [--objectives token_cls,edit_bt,...]
        [--sizes 500,2000,7000] [--epochs 3] [--mode cached|trainer] [--device cpu|cuda]
        [--n-dev N] [--n-test N] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, write_result
from editalign.batching.shared_prefix import (
    common_prefix_length,
    shared_prefix_mask,
    side_token_rows,
)
from editalign.data.align import IGNORE
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.mlqe import read_segments
from editalign.data.pairs import load_pairs
from editalign.eval import qe
from editalign.losses import reward_model_loss, token_rewards
from editalign.models import load_tokenizer
from editalign.reward_model import TokenRewardModel
from editalign.train.reward import RewardConfig

DATA = "../shared/data/mlqe-pe/{pair}-{split}.tar.gz"
# test20 lives in PAIR-test.tar.gz (folder PAIR-test20/)
ARCHIVE_SPLIT = {"train": "train", "dev": "dev", "test": "test"}


def objective_config(objective: str, equal_weight: float) -> RewardConfig:
    return RewardConfig(output_dir="unused", objective=objective.replace("+", ","),
                        equal_weight=equal_weight)


def load_train(pair: str, tokenizer, max_length: int, limit: int | None) -> list:
    """Labelled train pairs in a fixed shuffled order (nested subsets by size); labels per
    space-separated word, MLQE-PE's own unit (benchmarks/mlqe_label_agreement.py)."""
    pairs, _ = load_pairs(DATA.format(pair=pair, split="train"), preset="mlqe-pe")
    random.Random(0).shuffle(pairs)
    labeled, _ = label_pairs(pairs[:limit], tokenizer, LabelingConfig(
        granularity="space", max_length=max_length, truncation="keep_end"))
    return labeled


def load_eval(pair: str, split: str, tokenizer, max_length: int, n: int | None) -> list:
    """Labelled dev/test MTs (post-edit only for the oracle row), the first ``n`` lines."""
    segments = read_segments(DATA.format(pair=pair, split=ARCHIVE_SPLIT[split]))[:n]
    labeled, dropped = qe.labeled_segments(segments, tokenizer, max_length)
    if dropped:
        print(f"  {pair} {split}: {dropped} MTs dropped (truncated)", flush=True)
    return labeled


# ----------------------------------------------------------------------------- cached mode


def _run_layers(rotary, layers, h, position_ids, mask):
    pe = rotary(h, position_ids)
    for layer in layers:
        h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=position_ids)
        h = h[0] if isinstance(h, tuple) else h
    return h


def pair_row(original: list[int], revised: list[int]) -> tuple[list[int], list[int], list[int]]:
    """ids, positions and segments (0 prefix, 1 MT suffix, 2 PE suffix) of one shared row."""
    p = common_prefix_length(original, revised)
    ids = original + revised[p:]
    pos = list(range(len(original))) + list(range(p, len(revised)))
    seg = [0] * p + [1] * (len(original) - p) + [2] * (len(revised) - p)
    return ids, pos, seg


def _pad(rows, fill, dtype=torch.long):
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@torch.no_grad()
def cache_pairs(backbone, labeled, n_frozen: int, batch: int, device: str) -> list[dict]:
    """Layer-``n_frozen`` output of every pair's shared-prefix row (bf16, on the CPU)."""
    rows = [pair_row(lp.original.input_ids, lp.revised.input_ids) for lp in labeled]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: list[dict] = [{}] * len(rows)
    start, step = time.perf_counter(), max(len(order) // 4, 1)
    for k in range(0, len(order), batch):
        if k and k // step != (k - batch) // step:
            print(f"    cached {k}/{len(order)} pairs ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        idx = order[k:k + batch]
        ids = _pad([rows[i][0] for i in idx], 0).to(device)
        pos = _pad([rows[i][1] for i in idx], 0).to(device)
        seg = _pad([rows[i][2] for i in idx], -1).to(device)
        h = _run_layers(backbone.rotary_emb, backbone.layers[:n_frozen],
                        backbone.embed_tokens(ids), pos, shared_prefix_mask(seg))
        for row, i in enumerate(idx):
            n = len(rows[i][0])
            o_rows, r_rows = side_token_rows(labeled[i].original.input_ids,
                                             labeled[i].revised.input_ids)
            out[i] = {"h": h[row, :n].to("cpu", torch.bfloat16), "pos": rows[i][1],
                      "seg": rows[i][2], "o_rows": o_rows, "r_rows": r_rows}
    return out


@torch.no_grad()
def cache_mts(backbone, labeled, n_frozen: int, batch: int, device: str) -> list[torch.Tensor]:
    """Layer-``n_frozen`` output of each prompt + MT (causal, one row each)."""
    seqs = [lp.original.input_ids for lp in labeled]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[torch.Tensor] = [torch.zeros(0)] * len(seqs)
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        ids = _pad([seqs[i] for i in idx], 0).to(device)
        pos = torch.arange(ids.size(1), device=device)[None].expand(len(idx), -1)
        h = _run_layers(backbone.rotary_emb, backbone.layers[:n_frozen],
                        backbone.embed_tokens(ids), pos, None)
        for row, i in enumerate(idx):
            out[i] = h[row, : len(seqs[i])].to("cpu", torch.bfloat16)
    return out


class TopReward(torch.nn.Module):
    """The trained top of a TokenRewardModel: the last layers, the final norm, the head."""

    def __init__(self, backbone, n_frozen: int, n_top: int, head) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            copy.deepcopy(list(backbone.layers[n_frozen:n_frozen + n_top])))
        self.norm = copy.deepcopy(backbone.norm)
        self.head = head
        self._rotary = [backbone.rotary_emb]  # not a submodule: no parameters of its own

    def forward(self, h, position_ids, mask=None):
        h = _run_layers(self._rotary[0], self.layers, h, position_ids, mask)
        return self.head(self.norm(h)).squeeze(-1)


def _train_batch(cache, labeled, idx, device):
    """Padded shared rows, their mask and positions, and the (2B, T) gather/label tensors
    in the reward trainer's order (revised sides first, then original sides)."""
    items = [cache[i] for i in idx]
    width = max(len(it["pos"]) for it in items)
    h = torch.zeros((len(items), width, items[0]["h"].size(-1)))
    for r, it in enumerate(items):
        h[r, : len(it["pos"])] = it["h"].float()
    pos = _pad([it["pos"] for it in items], 0)
    mask = shared_prefix_mask(_pad([it["seg"] for it in items], -1))
    rows = [it["r_rows"] for it in items] + [it["o_rows"] for it in items]
    labels = [labeled[i].revised.labels for i in idx] + [labeled[i].original.labels for i in idx]
    return (h.to(device), pos.to(device), mask.to(device), _pad(rows, 0).to(device),
            _pad(labels, IGNORE).to(device))


@torch.no_grad()
def _eval_rewards(top, feats, labeled, transform, device, batch=32) -> list[np.ndarray]:
    top.eval()
    out: list[np.ndarray] = [np.zeros(0)] * len(feats)
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        width = max(len(feats[i]) for i in idx)
        h = torch.zeros((len(idx), width, feats[idx[0]].size(-1)))
        for r, i in enumerate(idx):
            h[r, : len(feats[i])] = feats[i].float()
        pos = torch.arange(width)[None].expand(len(idx), -1)
        rewards = token_rewards(top(h.to(device), pos.to(device)), transform).float().cpu()
        for r, i in enumerate(idx):
            side = labeled[i].original
            out[i] = rewards[r, side.response_start: len(side.input_ids)].numpy()
    top.train()
    return out


def _dev_mcc(sentences) -> float:
    scores, bad = qe._flat(sentences)
    t = qe.choose_threshold(scores, bad)
    return qe.tag_metrics(bad, scores <= t)["mcc"]


def run_cached(objective, size, args, base, n_frozen, train, cache, dev, dev_feats, test,
               test_feats) -> dict:
    config = objective_config(objective, args.equal_weight)
    objectives, transform = config.objectives(), config.model_config().transform
    torch.manual_seed(0)
    rm = TokenRewardModel(base.backbone, config.model_config())  # fresh seeded head
    top = TopReward(base.backbone, n_frozen, args.top_layers, rm.head).to(args.device)
    opt = torch.optim.AdamW(top.parameters(), lr=args.lr)
    order = list(range(size))
    rng = random.Random(0)
    best = (-2.0, None, 0)
    history = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(order)
        losses = []
        for k in range(0, size, args.batch_size):
            h, pos, mask, rows, labels = _train_batch(cache, train, order[k:k + args.batch_size],
                                                      args.device)
            logits = top(h, pos, mask)
            logits = torch.cat([logits, logits]).gather(1, rows)
            loss, _ = reward_model_loss(logits, labels, objectives, transform=transform,
                                        equal_weight=args.equal_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        dev_sent = qe.sentences_from_rewards(dev, _eval_rewards(top, dev_feats, dev, transform,
                                                                args.device))
        mcc = _dev_mcc(dev_sent)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "dev_mcc": mcc,
                        "seconds": time.perf_counter() - start})
        print(f"    epoch {epoch}: loss {np.mean(losses):.4f}, dev MCC {mcc:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        if mcc > best[0]:
            best = (mcc, copy.deepcopy(top.state_dict()), epoch)
    top.load_state_dict(best[1])
    dev_sent = qe.sentences_from_rewards(dev, _eval_rewards(top, dev_feats, dev, transform,
                                                            args.device))
    test_sent = qe.sentences_from_rewards(test, _eval_rewards(top, test_feats, test, transform,
                                                              args.device))
    result = qe.evaluate_qe(dev_sent, test_sent, n_resamples=args.bootstrap)
    return {"model": result["model"], "epoch_selected": best[2], "history": history,
            "train_seconds": time.perf_counter() - start, "train_pairs": size,
            "_full": result}


# ----------------------------------------------------------------------------- trainer mode


def run_trainer(objective, size, args, tokenizer, train, dev, test) -> dict:
    from transformers import TrainerCallback

    from editalign.train.common import ModelArguments
    from editalign.train.reward import RewardTrainer

    config = RewardConfig(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ea-rm-mlqe"),
        objective=objective.replace("+", ","), equal_weight=args.equal_weight,
        num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", save_strategy="no",
        eval_strategy="no", logging_steps=50, seed=0, disable_tqdm=True, report_to="none",
        pair_layout="shared", max_length=args.max_length)
    model_args = ModelArguments(model=args.model, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    model = TokenRewardModel.from_backbone(
        args.model, config.model_config(),
        peft_config=model_args.peft_config("FEATURE_EXTRACTION"), tokenizer=tokenizer)
    pad = tokenizer.pad_token_id
    state = {"best": (-2.0, None, 0), "history": []}
    start = time.perf_counter()

    def dev_sentences(m):
        return qe.sentences_from_rewards(dev, qe.mt_rewards(m, dev, pad, 64))

    class SelectOnDev(TrainerCallback):
        def on_epoch_end(self, _args, train_state, control, model=None, **_):
            mcc = _dev_mcc(dev_sentences(model))
            epoch = round(train_state.epoch)
            state["history"].append({"epoch": epoch, "dev_mcc": mcc,
                                     "seconds": time.perf_counter() - start})
            print(f"    epoch {epoch}: dev MCC {mcc:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            if mcc > state["best"][0]:
                trainable = {k: v.detach().cpu().clone() for k, v in model.named_parameters()
                             if v.requires_grad}
                state["best"] = (mcc, trainable, epoch)
            model.train()

    trainer = RewardTrainer(model, config, train_dataset=train[:size],
                            processing_class=tokenizer, callbacks=[SelectOnDev()])
    trainer.train()
    model.load_state_dict(state["best"][1], strict=False)
    result = qe.evaluate_qe(dev_sentences(model),
                            qe.sentences_from_rewards(test, qe.mt_rewards(model, test, pad, 64)),
                            n_resamples=args.bootstrap)
    return {"model": result["model"], "epoch_selected": state["best"][2],
            "history": state["history"], "train_seconds": time.perf_counter() - start,
            "train_pairs": size, "_full": result}


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="ro-en,en-de")
    ap.add_argument("--objectives", default="token_cls,edit_bt,seq_bt,token_cls=1+edit_bt=1",
                    help="comma-separated; a mix is written with '+'")
    ap.add_argument("--sizes", default="500,2000,7000", help="training pairs (nested subsets)")
    ap.add_argument("--runs", help="explicit OBJECTIVE@SIZE list instead of the full "
                    "objectives x sizes grid, run in this order (e.g. token_cls@500,edit_bt@500)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mode", choices=["cached", "trainer"], default="cached")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--top-layers", type=int, default=2,
                    help="cached mode: top transformer layers trained on the frozen cache "
                    "(0: only the final norm and the head, a probe of the frozen features)")
    ap.add_argument("--layers", type=int, default=0,
                    help="cached mode: use only the first N transformer layers of the model "
                    "(0: all); the lowest N - top-layers are frozen and cached")
    ap.add_argument("--lora-r", type=int, default=0, help="trainer mode: LoRA rank (0: full)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--equal-weight", type=float, default=1.0,
                    help="token_cls weight of equal tokens (target 0.5): QE must tell unchanged "
                    "MT words from changed ones, so they are trained on")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--n-dev", type=int, help="only the first N dev sentences")
    ap.add_argument("--n-test", type=int, help="only the first N test20 sentences")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: 200 train pairs, 100 dev / 100 test sentences, 1 epoch, "
                    "token_cls, the first pair only")
    ap.add_argument("--name", default="mlqe_reward")
    ap.add_argument("--cache-dir", help="cached mode: keep the frozen layers' outputs here and "
                    "reuse them when the same pair, model, layers and sizes come again")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.objectives = args.pairs.split(",")[0], "token_cls"
        args.sizes, args.epochs = "200", 1
        args.n_dev, args.n_test = args.n_dev or 100, args.n_test or 100
    if args.runs:
        grid = [(r.rsplit("@", 1)[0], int(r.rsplit("@", 1)[1])) for r in args.runs.split(",")]
    else:
        grid = [(o, int(n)) for o in args.objectives.split(",")
                for n in sorted(args.sizes.split(","), key=int)]
    sizes = sorted({n for _, n in grid})
    torch.manual_seed(0)
    if args.device == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    tokenizer = load_tokenizer(args.model)
    result: dict = {"settings": vars(args), "pairs": {}}
    for pair in args.pairs.split(","):
        t0 = time.perf_counter()
        train = load_train(pair, tokenizer, args.max_length, max(sizes))
        dev = load_eval(pair, "dev", tokenizer, args.max_length, args.n_dev)
        test = load_eval(pair, "test", tokenizer, args.max_length, args.n_test)
        test_bad = np.concatenate([qe.official_bad(lp) for lp in test])
        entry: dict = {"train_pairs_available": len(train), "dev_sentences": len(dev),
                       "test_sentences": len(test), "test_bad_share": float(test_bad.mean()),
                       "runs": {}}
        result["pairs"][pair] = entry
        print(f"{pair}: {len(train)} train pairs, {len(dev)} dev, {len(test)} test20 sentences "
              f"(test BAD share {test_bad.mean():.3f}) ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if args.mode == "cached":
            base = TokenRewardModel.from_backbone(args.model, tokenizer=tokenizer).eval()
            base.to(args.device)
            for p in base.parameters():
                p.requires_grad_(False)
            n_layers = args.layers or len(base.backbone.layers)
            n_frozen = n_layers - args.top_layers
            t1 = time.perf_counter()
            # The cache depends only on these; --cache-dir keeps it for later runs.
            key = (f"{pair}-{args.model}-L{n_frozen}-n{len(train)}-d{len(dev)}-t{len(test)}"
                   f"-m{args.max_length}.pt")
            stored = Path(args.cache_dir) / key if args.cache_dir else None
            if stored is not None and stored.exists():
                cache, dev_feats, test_feats = torch.load(stored, weights_only=False)
                print(f"  read the cache from {stored}", flush=True)
            else:
                cache = cache_pairs(base.backbone, train, n_frozen, 16, args.device)
                dev_feats = cache_mts(base.backbone, dev, n_frozen, 32, args.device)
                test_feats = cache_mts(base.backbone, test, n_frozen, 32, args.device)
                if stored is not None:
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    torch.save((cache, dev_feats, test_feats), stored)
            entry["cache_seconds"] = time.perf_counter() - t1
            entry["cache_tokens_shared_layout"] = sum(len(c["pos"]) for c in cache)
            entry["cache_tokens_padded_layout"] = sum(
                len(lp.original.input_ids) + len(lp.revised.input_ids) for lp in train)
            print(f"  cached layer-{n_frozen} outputs in {entry['cache_seconds']:.0f} s "
                  f"({entry['cache_tokens_shared_layout']} tokens in the shared layout, "
                  f"{entry['cache_tokens_padded_layout']} padded)", flush=True)
        for objective, size in grid:
            if size > len(train):
                print(f"  skipping {objective} @ {size}: only {len(train)} train pairs",
                      flush=True)
                continue
            key = f"{objective} @ {size}"
            print(f"  == {key} ==", flush=True)
            if args.mode == "cached":
                run = run_cached(objective, size, args, base, n_frozen, train, cache, dev,
                                 dev_feats, test, test_feats)
            else:
                run = run_trainer(objective, size, args, tokenizer, train, dev, test)
            full = run.pop("_full")
            entry.setdefault("references", full["references"])
            entry.setdefault("test", full["test"])
            entry.setdefault("dev", full["dev"])
            entry["runs"][key] = run
            m = run["model"]
            print(f"  {key}: test MCC {m['mcc']:.4f} [{m['mcc_ci95'][0]:.3f}, "
                  f"{m['mcc_ci95'][1]:.3f}], F1-MULT {m['f1_mult']:.4f}, Pearson "
                  f"{m.get('sentence', {}).get('pearson', float('nan')):.4f}", flush=True)
            write_result(args.name, result)
    write_result(args.name, result)
    (RESULTS / f"{args.name}.md").write_text(markdown_table(result))
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    s = result["settings"]
    how = (f"first {s['layers'] or 'all'} layers; the frozen ones cached, top {s['top_layers']} "
           "layers + final norm + head trained"
           if s["mode"] == "cached" else
           f"RewardTrainer, {'LoRA r=' + str(s['lora_r']) if s['lora_r'] else 'full'}")
    lines = [f"{s['model']} ({how}), {s['epochs']} epochs max (best dev epoch kept), lr "
             f"{s['lr']}, batch {s['batch_size']}, equal_weight {s['equal_weight']}, shared-prefix "
             "layout. Word score = min token reward; threshold chosen on dev.", "",
             "| pair | tagger | train pairs | test MCC | 95% CI | F1-BAD | F1-OK | F1-MULT | "
             "Pearson (HTER) | Spearman (HTER) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, entry in result["pairs"].items():
        for key, run in entry["runs"].items():
            m, sent = run["model"], run["model"].get("sentence", {})
            lines.append(
                f"| {pair} | {key.split(' @ ')[0]} | {run['train_pairs']} | {m['mcc']:.3f} | "
                f"[{m['mcc_ci95'][0]:.3f}, {m['mcc_ci95'][1]:.3f}] | {m['f1_bad']:.3f} | "
                f"{m['f1_ok']:.3f} | {m['f1_mult']:.3f} | {sent.get('pearson', float('nan')):.3f}"
                f" | {sent.get('spearman', float('nan')):.3f} | {run['train_seconds']:.0f} |")
        for name, r in entry.get("references", {}).items():
            lines.append(f"| {pair} | {name} | | {r['mcc']:.3f} | [{r['mcc_ci95'][0]:.3f}, "
                         f"{r['mcc_ci95'][1]:.3f}] | {r['f1_bad']:.3f} | {r['f1_ok']:.3f} | "
                         f"{r['f1_mult']:.3f} | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
