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

- ``--mode cached`` (the CPU default): ``editalign train token-rm --freeze_layers`` (the same
  code: ``RewardTrainer`` and ``editalign.train.frozen``). The model is cut to its first
  ``--layers`` layers, the lower ``--layers - --top-layers`` are frozen and run once over
  every pair in the **shared-prefix layout** (one row per pair: [prompt + unedited prefix |
  MT suffix | post-edit suffix], a 4-D mask; see batching/shared_prefix.py); their output is
  cached once per language pair (shared by every run of the grid), and only the top
  layers, the final norm and the head train on it. Dev MTs (epoch choice) and test MTs run
  through the whole model, as ``editalign eval qe`` runs it.
- ``--mode trainer``: ``RewardTrainer`` with ``--pair_layout shared``, full fine-tuning or
  LoRA (``--lora-r``); for a GPU (``--device cuda``), where the full grid (7,000 pairs,
  every objective) takes minutes.

``--context causal|echo|bidirectional`` is ``train token-rm --context`` (what each token's
reward reads); ``--save-dir`` keeps every run's model for ``editalign eval qe``; ``--seeds``
trains each run once per seed (the seed spread of a configuration, docs/mlqe-pe.md).

    python benchmarks/mlqe_reward.py [--pairs ro-en,en-de] [--objectives token_cls,edit_bt,...]
        [--sizes 500,2000,7000] [--epochs 3] [--mode cached|trainer] [--device cpu|cuda]
        [--n-dev N] [--n-test N] [--context causal|echo|bidirectional] [--seeds 0,1,2] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from _common import RESULTS, write_result
from editalign.batching.layout import PairLayout
from editalign.batching.tokens import PairDataset, RewardPairCollator
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.mlqe import read_segments
from editalign.data.pairs import load_pairs
from editalign.eval import qe
from editalign.models import load_tokenizer, resolve_model_path
from editalign.reward_model import CONTEXT_CHOICES, TokenRewardModel
from editalign.train.frozen import cache_frozen, truncate_layers
from editalign.train.reward import RewardConfig

DATA = "../shared/data/mlqe-pe/{pair}-{split}.tar.gz"
# test20 lives in PAIR-test.tar.gz (folder PAIR-test20/)
ARCHIVE_SPLIT = {"train": "train", "dev": "dev", "test": "test"}


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


def _dev_mcc(sentences) -> float:
    scores, bad = qe._flat(sentences)
    t = qe.choose_threshold(scores, bad)
    return qe.tag_metrics(bad, scores <= t)["mcc"]


def build_model(args, config: RewardConfig, tokenizer, n_layers: int,
                seed: int = 0) -> TokenRewardModel:
    """A fresh reward model (head seeded with ``seed``) on the backbone, cut to ``n_layers``
    layers."""
    from editalign.train.common import ModelArguments

    torch.manual_seed(seed)
    model_args = ModelArguments(model=args.model, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    model = TokenRewardModel.from_backbone(
        args.model, config.model_config(),
        peft_config=model_args.peft_config("FEATURE_EXTRACTION"), tokenizer=tokenizer)
    if n_layers:
        truncate_layers(model.backbone, n_layers)
    return model


def frozen_cache_for(args, tokenizer, train, n_layers: int, n_frozen: int, key: str) -> list:
    """The frozen layers' output for every train pair, computed once per language pair (the
    code of `train token-rm --freeze_layers`), kept in --cache-dir when given."""
    stored = Path(args.cache_dir) / key if args.cache_dir else None
    if stored is not None and stored.exists():
        print(f"  read the cache from {stored}", flush=True)
        return torch.load(stored, weights_only=False)
    config = make_config(args, "token_cls", n_frozen)
    model = build_model(args, config, tokenizer, n_layers).to(args.device)
    collator = RewardPairCollator(pad_token_id=tokenizer.pad_token_id,
                                  layout=PairLayout(layout="shared"), context=model.context)
    hidden = cache_frozen(model, PairDataset(train, args.max_length), collator, n_frozen)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        torch.save(hidden, stored)
    return hidden


# ----------------------------------------------------------------------------- trainer mode


def make_config(args, objective: str, n_frozen: int = 0, seed: int = 0) -> RewardConfig:
    cached = args.mode == "cached"
    return RewardConfig(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ea-rm-mlqe"),
        objective=objective.replace("+", ","), equal_weight=args.equal_weight,
        num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        # cached mode keeps the first version's optimiser: torch AdamW's weight decay 0.01,
        # no gradient clipping
        weight_decay=0.01 if cached else 0.0, max_grad_norm=0.0 if cached else 1.0,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", save_strategy="no",
        eval_strategy="no", logging_steps=50, seed=seed, disable_tqdm=True, report_to="none",
        pair_layout="shared", max_length=args.max_length, context=args.context,
        freeze_layers=n_frozen)


def run_trainer(objective, size, args, tokenizer, train, dev, test, n_layers: int = 0,
                n_frozen: int = 0, frozen: list | None = None,
                save_to: Path | None = None, seed: int = 0) -> dict:
    """One run through RewardTrainer (the code of `editalign train token-rm`): full or
    LoRA fine-tuning, or (cached mode) --freeze_layers with the frozen part's output given."""
    from transformers import TrainerCallback

    from editalign.train.reward import RewardTrainer

    config = make_config(args, objective, n_frozen, seed)
    model = build_model(args, config, tokenizer, n_layers, seed)
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
                            processing_class=tokenizer, callbacks=[SelectOnDev()],
                            frozen_cache=None if frozen is None else frozen[:size])
    trainer.train()
    model.load_state_dict(state["best"][1], strict=False)
    if save_to is not None:
        model.save_pretrained(save_to, tokenizer=tokenizer)
    if args.dev_only:  # choosing a configuration: test20 stays unseen
        return {"dev_mcc_selected": state["best"][0], "epoch_selected": state["best"][2],
                "history": state["history"], "train_seconds": time.perf_counter() - start,
                "train_pairs": size, "seed": seed}
    result = qe.evaluate_qe(dev_sentences(model),
                            qe.sentences_from_rewards(test, qe.mt_rewards(model, test, pad, 64)),
                            n_resamples=args.bootstrap)
    return {"model": result["model"], "epoch_selected": state["best"][2],
            "history": state["history"], "train_seconds": time.perf_counter() - start,
            "train_pairs": size, "seed": seed, "_full": result}


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
    ap.add_argument("--seeds", default="0",
                    help="comma-separated training seeds: each seeds the head's initialisation and "
                    "the Trainer (data order); the pairs' shuffle, and so the nested subsets, "
                    "stays seed 0. A run of seed N > 0 is named 'OBJECTIVE @ SIZE seed N'")
    ap.add_argument("--name", default="mlqe_reward")
    ap.add_argument("--context", default="causal", choices=CONTEXT_CHOICES,
                    help="what each token's reward reads (train token-rm --context)")
    ap.add_argument("--dev-only", action="store_true",
                    help="select on dev only: train, keep the best dev epoch, report its dev "
                    "MCC and never score test20 (score the chosen model afterwards, e.g. with "
                    "editalign eval qe on the --save-dir model)")
    ap.add_argument("--save-dir",
                    help="save each run's reward model here (PAIR/OBJECTIVE@SIZE/)")
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
    seeds = [int(x) for x in args.seeds.split(",")]
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
        n_layers = n_frozen = 0
        frozen = None
        if args.mode == "cached":
            n_layers = args.layers or AutoConfig.from_pretrained(
                resolve_model_path(args.model)).num_hidden_layers
            n_frozen = n_layers - args.top_layers
            if n_frozen < 1:
                raise SystemExit(f"--top-layers {args.top_layers} leaves nothing to freeze in "
                                 f"{n_layers} layers: lower it, or use --mode trainer")
            t1 = time.perf_counter()
            # The cache depends only on these; --cache-dir keeps it for later runs.
            key = (f"{pair}-{args.model}-L{n_frozen}-{args.context}-n{len(train)}"
                   f"-m{args.max_length}.pt")
            frozen = frozen_cache_for(args, tokenizer, train, n_layers, n_frozen, key)
            entry["cache_seconds"] = time.perf_counter() - t1
            entry["cache_tokens_shared_layout"] = sum(len(h) for h in frozen)
            entry["cache_tokens_padded_layout"] = sum(
                len(lp.original.input_ids) + len(lp.revised.input_ids) for lp in train)
            print(f"  cached layer-{n_frozen} outputs in {entry['cache_seconds']:.0f} s "
                  f"({entry['cache_tokens_shared_layout']} tokens in the shared layout, "
                  f"{entry['cache_tokens_padded_layout']} padded)", flush=True)
        for (objective, size), seed in itertools.product(grid, seeds):
            if size > len(train):
                print(f"  skipping {objective} @ {size}: only {len(train)} train pairs",
                      flush=True)
                continue
            seed_tag = f" seed {seed}" if seed else ""  # seed 0 keeps the names of old runs
            key = f"{objective} @ {size}{seed_tag}"
            print(f"  == {key} ==", flush=True)
            # one folder per pair: two pairs' runs of one OBJECTIVE@SIZE must not overwrite
            save_to = (Path(args.save_dir) / pair / f"{objective}@{size}{seed_tag.replace(' ', '-')}"
                       if args.save_dir else None)
            run = run_trainer(objective, size, args, tokenizer, train, dev, test, n_layers,
                              n_frozen, frozen, save_to, seed)
            if args.dev_only:
                entry["runs"][key] = run
                print(f"  {key}: dev MCC {run['dev_mcc_selected']:.4f} (epoch "
                      f"{run['epoch_selected']})", flush=True)
                write_result(args.name, result)
                continue
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
            tagger = key.split(" @ ")[0] + (f" seed {run['seed']}" if run.get("seed") else "")
            if "model" not in run:  # --dev-only: the dev MCC that chooses, no test20
                lines.append(f"| {pair} | {tagger} (context {s['context']}) | "
                             f"{run['train_pairs']} | dev {run['dev_mcc_selected']:.3f} | | | | "
                             f"| | | {run['train_seconds']:.0f} |")
                continue
            m, sent = run["model"], run["model"].get("sentence", {})
            lines.append(
                f"| {pair} | {tagger} | {run['train_pairs']} | {m['mcc']:.3f} | "
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
