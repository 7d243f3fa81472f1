"""``bench init``'s work: the task files, the initial policy fine-tuned on the noisy
responses, its samples revised into edit pairs (train and held-out), and the gold judge's
view of each stage (``summary.json``). The command is :mod:`editalign.commands.bench`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editalign.bench.task import (
    BenchTask,
    PolicySFTConfig,
    judge_summary,
    make_edit_pairs,
    train_initial_policy,
)
from editalign.bench.world import BenchConfig
from editalign.data.pairs import save_pairs_jsonl
from editalign.generation import SamplingConfig, sample_responses
from editalign.models import load_model, load_tokenizer

SUMMARY_ROWS = ("noisy_sft_data", "policy_train_samples", "revised_train_samples",
                "policy_test_samples")


@dataclass
class PairSampling:
    """How the initial policy's samples become the edit pairs the methods train on."""

    pair_prompts: int  # at most this many training prompts (a seeded subset; 0: all)
    samples_per_prompt: int
    sampling: SamplingConfig


def init_bench(out: Path, config: BenchConfig, sft: PolicySFTConfig, model: str,
               pairs_from: PairSampling) -> dict[str, Any]:
    """Write the task into ``out``, train ``out/policy`` from ``model``, write
    ``pairs.train.jsonl`` and ``pairs.test.jsonl``; returns the summary (without its
    ``seconds``)."""
    task = BenchTask.build(config)
    if not task.split("test"):
        raise ValueError(f"--test-fraction {config.test_fraction} holds out no prompt of this "
                         f"task ({len(task.world.entities)} entities): raise it or the sizes")
    task.write(out)
    rows = task.noisy_sft_rows()
    print(f"task: {len(task.world.entities)} entities, {len(task.split('train'))} train / "
          f"{len(task.split('test'))} test prompts, {len(rows)} noisy SFT responses -> {out}")
    summary: dict[str, Any] = {"config": config.to_dict(), "model": model, "sft": sft.__dict__}
    summary["noisy_sft_data"] = judge_summary([r["response"] for r in rows],
                                              [r["bench"] for r in rows])
    summary["noisy_sft_data"]["edits_per_response"] = per_response(
        [Counter(e["kind"] for e in r["errors"]) for r in rows])
    log = train_initial_policy(rows, model, out / "policy", config=sft)
    summary["sft_final_loss"] = log[-1]["loss"]
    print(f"initial policy: {sft.steps} steps, final loss {log[-1]['loss']:.4f} -> "
          f"{out / 'policy'}")
    policy, tokenizer = load_model(str(out / "policy")), load_tokenizer(str(out / "policy"))
    summary.update(_train_pairs(out, task, config.seed, policy, tokenizer, pairs_from))
    summary.update(_test_pairs(out, task, policy, tokenizer, pairs_from.sampling))
    return summary


def _train_pairs(out: Path, task: BenchTask, seed: int, policy: Any, tokenizer: Any,
                 pairs_from: PairSampling) -> dict[str, Any]:
    train_rows = task.rows("train")
    if 0 < pairs_from.pair_prompts < len(train_rows):
        # A task with many training prompts (the grounded one: many entities, so that the
        # policy must copy from the card) keeps its edit pairs at the size the methods train on.
        train_rows = random.Random(f"pair-prompts-{seed}").sample(train_rows,
                                                                  pairs_from.pair_prompts)
    train_rows = train_rows * pairs_from.samples_per_prompt
    samples = sample_responses(policy, tokenizer, [r["prompt"] for r in train_rows],
                               pairs_from.sampling)
    texts = [s.text for s in samples]
    pairs = make_edit_pairs(train_rows, texts)
    save_pairs_jsonl(pairs, out / "pairs.train.jsonl")
    infos = [r["bench"] for r in train_rows]
    summary: dict[str, Any] = {"policy_train_samples": judge_summary(texts, infos)}
    # What the reviser fixes in them, by kind (on the grounded task: where a wrong value came
    # from), to set beside the planted errors of the noisy data.
    summary["policy_train_samples"]["edits_per_response"] = per_response(
        [p.meta["edits"] for p in pairs])
    summary["revised_train_samples"] = judge_summary([p.revised for p in pairs], infos)
    summary["pairs"] = {"n": len(pairs), "with_edit": sum(p.has_edit for p in pairs),
                        "prompts": len(train_rows) // pairs_from.samples_per_prompt,
                        "samples_per_prompt": pairs_from.samples_per_prompt}
    return summary


def _test_pairs(out: Path, task: BenchTask, policy: Any, tokenizer: Any,
                sampling: SamplingConfig) -> dict[str, Any]:
    """Held-out edit pairs (the initial policy's test samples, revised): `bench run` reports
    every reward model's pair accuracy and token AUROC on them."""
    test_rows = task.rows("test")
    test = sample_responses(policy, tokenizer, [r["prompt"] for r in test_rows], sampling)
    summary: dict[str, Any] = {"policy_test_samples": judge_summary(
        [s.text for s in test], [r["bench"] for r in test_rows])}
    test_pairs = make_edit_pairs(test_rows, [s.text for s in test])
    save_pairs_jsonl(test_pairs, out / "pairs.test.jsonl")
    summary["policy_test_samples"]["edits_per_response"] = per_response(
        [p.meta["edits"] for p in test_pairs])
    summary["test_pairs"] = {"n": len(test_pairs),
                             "with_edit": sum(p.has_edit for p in test_pairs)}
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The gold judge's view of each stage, as `bench init` prints it."""
    lines = ["| responses | gold score | right attrs | wrong/resp | unwanted/resp | perfect |",
             "|---|---|---|---|---|---|"]
    for name in SUMMARY_ROWS:
        s = summary[name]
        lines.append(f"| {name} | {s['score']:.3f} | {s['correct_rate']:.3f} | "
                     f"{s['wrong_per_response']:.2f} | {s['unwanted_per_response']:.2f} | "
                     f"{s['perfect']:.3f} |")
    return "\n".join(lines)


def per_response(counts: list[Counter[str] | dict[str, int]]) -> dict[str, float]:
    """Mean count of each edit kind per response."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return {kind: n / max(len(counts), 1) for kind, n in sorted(total.items())}
