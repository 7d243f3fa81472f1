"""Reward-model training throughput: editalign's RewardTrainer vs TRL's RewardTrainer.

Same backbone, same pairs (QA-Feedback human edits, question-only prompts, labelled with
the model's tokenizer; chosen = revised, rejected = original), same batch size, seed, step
count and precision (float32, no gradient checkpointing, both on CPU). TRL trains
``AutoModelForSequenceClassification`` (reward at the last non-pad token); editalign
trains ``TokenRewardModel`` with ``seq_bt_last`` (the same loss) and with ``token_cls``
(the token-level objective). Throughput = training tokens (attention-mask sum, counted
the same way by both) / wall time of ``trainer.train()``; runs alternate, best of
``--repeats`` (the order alternates between repeats; one torch thread by default, which is
the least noisy on a shared machine). Target (issue 4): editalign ≥ 0.95× TRL.

    python benchmarks/reward_speed.py [--model tiny] [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import datasets
import torch

from _common import write_result
from editalign.models import resolve_model_path
from editalign.reward_model import TokenRewardModel
from editalign.train.reward import RewardConfig, RewardTrainer
from reward_qa_feedback import load_split


def run_ours(model_name, tokenizer, pairs, args, objective):
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(), objective=objective, max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-5, use_cpu=True,
        save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True, seed=0)
    torch.manual_seed(0)
    model = TokenRewardModel.from_backbone(model_name, config.model_config(), tokenizer=tokenizer)
    trainer = RewardTrainer(model, config, train_dataset=pairs, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return trainer.train_tokens, time.perf_counter() - start


def run_trl(model_name, tokenizer, pairs, args):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TrlConfig
    from trl import RewardTrainer as TrlTrainer

    ds = datasets.Dataset.from_dict({"chosen_ids": [p.revised.input_ids for p in pairs],
                                     "rejected_ids": [p.original.input_ids for p in pairs]})
    config = TrlConfig(
        output_dir=tempfile.mkdtemp(), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-5, use_cpu=True,
        bf16=False, gradient_checkpointing=False, save_strategy="no", logging_steps=10_000,
        report_to="none", disable_tqdm=True, seed=0, max_length=None)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model_name), num_labels=1, local_files_only=True)
    trainer = TrlTrainer(model, config, train_dataset=ds, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return trainer._total_train_tokens, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both (1 is the least noisy on a shared machine)")
    ap.add_argument("--name", default="reward_speed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, train, _, _ = load_split(args.model, "question", 0, 1024)
    runs: dict[str, list[dict[str, float]]] = {"trl_seq_rm": [], "editalign_seq_bt_last": [],
                                               "editalign_token_cls": []}
    for r in range(args.repeats):
        names = list(runs) if r % 2 == 0 else list(runs)[::-1]  # alternate who runs first
        for name in names:
            if name == "trl_seq_rm":
                tokens, seconds = run_trl(args.model, tokenizer, train, args)
            else:
                tokens, seconds = run_ours(args.model, tokenizer, train, args,
                                           name.removeprefix("editalign_"))
            runs[name].append({"tokens": tokens, "seconds": seconds,
                               "tokens_per_s": tokens / seconds})
            print(f"repeat {r} {name}: {tokens} tokens in {seconds:.1f} s = "
                  f"{tokens / seconds:.0f} tok/s", flush=True)
    best = {k: max(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    result = {
        "settings": {**vars(args), "threads": torch.get_num_threads(),
                     "load_average_at_end": os.getloadavg()},
        "runs": runs,
        "best_tokens_per_s": best,
        "ratio_seq_bt_last_vs_trl": best["editalign_seq_bt_last"] / best["trl_seq_rm"],
        "ratio_token_cls_vs_trl": best["editalign_token_cls"] / best["trl_seq_rm"],
        "target": 0.95,
    }
    print({k: round(v, 3) for k, v in result.items() if k.startswith("ratio")})
    write_result(args.name, result)


if __name__ == "__main__":
    main()
