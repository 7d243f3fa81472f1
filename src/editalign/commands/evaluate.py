"""``editalign eval winrate|qe``: a policy's win rate against a reference, or the word-level
quality estimation of a token reward model (docs/benchmark.md, docs/mlqe-pe.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from editalign.commands.common import add_config_argument
from editalign.data.prompts import CHAT_TEMPLATE_MODES

NAME = "eval"
HELP = ("evaluate a policy: `editalign eval winrate` (win rate against a reference with a 95%% "
        "bootstrap interval, KL and length)")
DESCRIPTION = ("Win rate of --policy against --reference on --prompts, judged by the bench "
               "task's gold judge, a reward model or an LLM behind an OpenAI-compatible "
               "endpoint; see docs/benchmark.md.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("metric", choices=["winrate", "qe"], help="what to evaluate: winrate, or "
                   "qe (word-level quality estimation of a token reward model, docs/mlqe-pe.md)")
    add_config_argument(p)
    p.add_argument("--policy", help="the policy: registered name, local directory or cached id")
    p.add_argument("--reference", help="the reference model (usually the starting policy)")
    p.add_argument("--prompts", help="JSONL/JSON rows with a 'prompt' (text or chat "
                   "messages); for --judge gold, the bench task's prompts.test.jsonl")
    p.add_argument("--judge", default="gold",
                   help="gold (bench task), rm:DIR (a saved reward model), or api:URL (an "
                   "OpenAI-compatible endpoint, e.g. api:http://localhost:8000/v1)")
    p.add_argument("--judge-model", default="gpt-4o-mini", help="model name for api: judges")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (never printed)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature for both sides; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples-per-prompt", type=int, default=1,
                   help="responses per prompt and side; the interval still resamples prompts")
    p.add_argument("--chat-template", choices=CHAT_TEMPLATE_MODES, default="auto")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", help="write the result JSON here (qe: an output directory)")
    p.add_argument("--samples-out", help="write every prompt's two responses and outcome "
                   "(JSONL) here")
    _add_qe_arguments(p)


def _add_qe_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``editalign eval qe`` (the shared ones, --limit --batch-size --seed
    --bootstrap --out, come from ``add_arguments``)."""
    g = p.add_argument_group("qe (word-level quality estimation on MLQE-PE-format data)")
    g.add_argument("--reward-model", help="qe: directory written by `editalign train token-rm`")
    g.add_argument("--data", help="qe: test data, an MLQE-PE archive or folder "
                   "(e.g. ../shared/data/mlqe-pe/ro-en-test.tar.gz); needs .src .mt .tags")
    g.add_argument("--dev", help="qe: dev data in the same format; chooses the BAD threshold")
    g.add_argument("--max-length", type=int, default=1024,
                   help="qe: longest prompt+MT+EOS in tokens (prompt cut first)")
    g.add_argument("--html-pairs", type=int, default=100, help="qe: sentences in index.html")


def run(args: argparse.Namespace) -> int:
    """``editalign eval winrate|qe``; ``--judge`` becomes a judge through
    :func:`editalign.registry.make_judge`, the table of every judge."""
    if args.metric == "qe":
        return _run_qe(args)
    from editalign.eval.winrate import evaluate_winrate, read_prompt_rows
    from editalign.generation import SamplingConfig
    from editalign.registry import make_judge

    if not (args.policy and args.reference and args.prompts):
        raise ValueError("--policy, --reference and --prompts are required")
    from editalign.outputs import check_distinct, check_file, write_text

    inputs = {"--prompts": args.prompts, "--policy": args.policy,
              "--reference": args.reference}
    for flag, path in (("--out", args.out), ("--samples-out", args.samples_out)):
        if path:  # before any model loads
            check_file(path, flag=flag, inputs=inputs)
    check_distinct({"--out": args.out, "--samples-out": args.samples_out})
    rows = read_prompt_rows(args.prompts, args.limit)
    judge = make_judge(args.judge, judge_model=args.judge_model, api_key_env=args.api_key_env)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                              batch_size=args.batch_size, chat_template=args.chat_template,
                              samples_per_prompt=args.samples_per_prompt)
    result = evaluate_winrate(args.policy, args.reference, rows, judge, sampling,
                              n_resamples=args.bootstrap, samples_out=args.samples_out)
    print(result.table())
    if args.out:
        write_text(args.out, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")
    return 0


def _run_qe(args: argparse.Namespace) -> int:
    from editalign.data.mlqe import read_segments
    from editalign.eval.qe import (
        evaluate_qe,
        labeled_segments,
        markdown,
        mt_rewards,
        sentences_from_rewards,
    )
    from editalign.reward_model import TokenRewardModel

    if not (args.reward_model and args.data and args.dev and args.out):
        raise ValueError("editalign eval qe: --reward-model, --data, --dev and --out are "
                         "required")
    from editalign.outputs import check_dir, mark_dir, write_text

    # Before the model loads: --out is new, empty or an earlier `eval qe` output.
    out = check_dir(args.out, flag="--out", command="eval qe", legacy=(("qe.json",),),
                    inputs={"--data": args.data, "--dev": args.dev,
                            "--reward-model": args.reward_model})
    started = time.perf_counter()
    tokenizer = TokenRewardModel.load_tokenizer(args.reward_model)
    model = TokenRewardModel.from_pretrained(args.reward_model, tokenizer=tokenizer)
    if model.reward_config.read_at != "token":
        raise ValueError(f"{args.reward_model} is a sequence reward model (read_at "
                         f"{model.reward_config.read_at!r}); word-level QE needs token rewards")
    parts = {}
    for name, source in (("dev", args.dev), ("test", args.data)):
        segments = read_segments(source)[: args.limit]
        labeled, dropped = labeled_segments(segments, tokenizer, args.max_length or None)
        rewards = mt_rewards(model, labeled, tokenizer.pad_token_id, args.batch_size)
        parts[name] = (labeled, rewards, sentences_from_rewards(labeled, rewards), dropped)
        print(f"{name}: scored {len(labeled)} MT sentences from {source} "
              f"({dropped} dropped: MT truncated) ({time.perf_counter() - started:.0f} s)",
              flush=True)
    result = evaluate_qe(parts["dev"][2], parts["test"][2], n_resamples=args.bootstrap,
                         seed=args.seed)
    result.update(name=f"reward model {args.reward_model}", reward_model=args.reward_model,
                  data=args.data, dev_data=args.dev,
                  dropped_truncated={k: v[3] for k, v in parts.items()},
                  seconds=time.perf_counter() - started)
    mark_dir(out, "eval qe")
    write_text(out / "qe.json", json.dumps(result, indent=2))
    table = markdown(result, f"Word-level QE of {args.reward_model} on {args.data}")
    write_text(out / "qe.md", table)
    _write_page(out / "index.html", parts["test"], result["model"], args, tokenizer.eos_token,
                model.reward_config.read_at)
    out = Path(args.out)
    print(table)
    print(f"  result: {out / 'qe.json'}\n  table:  {out / 'qe.md'}\n  view:   {out / 'index.html'}")
    return 0


def _write_page(path: Path, test: tuple, model_result: dict, args: argparse.Namespace,
                eos: str | None, read_at: str) -> None:
    """The token page of the test sentences: dotted = the model tags the word BAD, wavy =
    the official tag is BAD."""
    from editalign.eval.qe import page_records
    from editalign.eval.token_html import render_html
    from editalign.outputs import write_text

    labeled, rewards, sentences, _ = test
    records = page_records(labeled, rewards, sentences, model_result["threshold"], eos or "")
    shown = {k: v for k, v in model_result.items() if isinstance(v, float)}
    legend = ("<span class='edit'>dotted</span>: the model tags the word BAD (min token "
              f"reward <= {model_result['threshold']:.4g}, chosen on dev). "
              "<span class='human'>wavy</span>: the official MLQE-PE tag is BAD.")
    write_text(path, render_html(records[: args.html_pairs], shown,
                                 f"editalign eval qe: {args.reward_model}", read_at,
                                 legend=legend))
