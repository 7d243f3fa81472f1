"""``editalign bench init|run``: the benchmark task, then every method trained on it.

``bench init`` prepares everything the methods train on::

    editalign bench init --out bench --model tiny-bench --sft-steps 1000

writes the task (``config.json``, ``world.json``, ``prompts.{train,test}.jsonl``,
``sft_noisy.jsonl``), fine-tunes ``--model`` on the noisy responses into ``bench/policy``
(the initial policy and the reference of every win rate), samples it on the training
prompts, revises the samples with the programmatic reviser into ``bench/pairs.train.jsonl``
(EditPair JSONL, the input of ``editalign label`` and every trainer) and writes
``bench/summary.json`` with the gold judge's view of each stage. ``bench run`` trains
every method on those pairs and measures win rates (:mod:`editalign.bench.runner`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from editalign.bench.online import ONLINE
from editalign.bench.runner import (
    DEFAULT_METHODS,
    METHODS,
    STAGE_LOG,
    RunConfig,
    claim_run_dir,
    progress_bars_off_unless_terminal,
    run_benchmark,
    stage_output,
)
from editalign.bench.task import PolicySFTConfig
from editalign.bench.world import TASKS, BenchConfig
from editalign.commands.common import add_config_argument
from editalign.outputs import OutputError, claim_dir, first_difference, mark_dir

NAME = "bench"
HELP = ("the generated benchmark task: `editalign bench init` writes the task, trains the "
        "initial policy on noisy responses and revises its samples into edit pairs; "
        "`editalign bench run` trains every method on them and measures win rates")
DESCRIPTION = "See docs/benchmark.md."

# Sizes of `bench run --full` / `--quick` / `--smoke` (argparse destinations; every method
# shares the same pairs, steps, batch size and seed as always). Applied only to options left
# at their defaults. --full is the reported setting; --quick is one seed of it.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"max_new_tokens": 64, "num_seeds": 10},
    "quick": {"max_new_tokens": 64},
    # test_fraction: the grounded default (0.03) would hold out no entity of a toy world.
    "smoke": {"num_people": 4, "num_animals": 2, "test_fraction": 0.2,
              "responses_per_prompt": 2, "sft_steps": 30,
              "sft_batch_size": 8, "sft_warmup_steps": 2, "samples_per_prompt": 1,
              "max_new_tokens": 16, "run_max_steps": 2, "run_batch_size": 4,
              "run_ppo_iterations": 1, "run_ppo_rollout_batch_size": 4, "run_eval_limit": 4,
              "run_eval_max_new_tokens": 8, "run_eval_samples_per_prompt": 1,
              "run_eval_batch_size": 8},
}

# RunConfig fields that are no `bench run --flag` of their own: set from other flags
# (--methods, --method-args, --seeds/--num-seeds) or by the runner (seed, task).
NOT_RUN_FLAGS = ("methods", "extra", "seed", "seeds", "task")

# Settings in which the grounded task differs from the first one (argparse destinations).
# The first task keeps the dataclasses' defaults, so its files and numbers stay as they were;
# `bench init|run --task grounded` applies these to every option the user did not set (the
# parser's default for them is None, so an explicit value wins even when it equals the first
# task's default). The initial policy must learn to *copy* from the card, not memorise
# entities: more entities of which a smaller fraction is held out (about as many held-out
# prompts as before), one noisy response per prompt (more distinct cards for the same SFT
# data size), and a longer SFT (docs/benchmark.md, "Defaults of `--task grounded`").
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "facts": {},
    "grounded": {"num_people": 400, "num_animals": 32, "about_prompts_per_entity": 4,
                 "questions_per_attribute": 2, "test_fraction": 0.03,
                 "responses_per_prompt": 1, "sft_steps": 4000, "pair_prompts": 336},
}


# The first task's defaults of the edit-pair options a task can change.
PAIR_DEFAULTS: dict[str, int] = {"pair_prompts": 0, "samples_per_prompt": 2}


def task_default_dests() -> set[str]:
    """Options whose default depends on ``--task``."""
    return {dest for values in TASK_DEFAULTS.values() for dest in values}


def _base_defaults() -> dict[str, Any]:
    """The first task's default of every option :data:`TASK_DEFAULTS` can change."""
    base = {f.name: f.default for f in fields(BenchConfig)}
    base.update({"sft_" + f.name: f.default for f in fields(PolicySFTConfig)})
    base.update(PAIR_DEFAULTS)
    return base


def apply_task_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every task-dependent option left unset (None) with its value for ``args.task``."""
    base = _base_defaults()
    for dest in sorted(task_default_dests()):
        if getattr(args, dest, None) is None:
            setattr(args, dest, TASK_DEFAULTS[args.task].get(dest, base[dest]))
    return args


def _default_help(dest: str, default: Any) -> str:
    per_task = "; ".join(f"--task {task}: {values[dest]}" for task, values in TASK_DEFAULTS.items()
                         if dest in values)
    return f"(default: {default}; {per_task})" if per_task else f"(default: {default})"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init", "run"],
                   help="init: task files, initial policy, edit pairs (into --out); run: train "
                   "every method on the pairs of --bench and measure win rates (into --out)")
    add_config_argument(p)
    p.add_argument("--full", dest="preset", action="store_const", const="full",
                   help="run: the reported benchmark on tiny-bench: bench init into OUT/bench "
                   "when --bench is not given, every method at the tuned settings for 10 seeds, "
                   "evaluation, report (~15 min on a 2-core CPU). Explicit options win.")
    p.add_argument("--quick", dest="preset", action="store_const", const="quick",
                   help="run: --full with one seed (~2 min); the demo runs this")
    p.add_argument("--smoke", dest="preset", action="store_const", const="smoke",
                   help="like --quick at a toy size (seconds; checks the pipeline runs, "
                   "its numbers mean nothing)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--model", default=None,
                   help="model to fine-tune into the initial policy (tiny-bench, "
                   "tiny-bench-grounded, smollm2-135m, a local directory; default: "
                   "tiny-bench, or tiny-bench-grounded with --task grounded)")
    task = p.add_argument_group("task (BenchConfig)")
    per_task = task_default_dests()
    for f in fields(BenchConfig):
        default = f.default if f.default is not MISSING else None
        task.add_argument(_flag(f.name), type=type(default),
                          default=None if f.name in per_task else default,
                          choices=TASKS if f.name == "task" else None,
                          help=_default_help(f.name, default))
    sft = p.add_argument_group("initial policy SFT")
    for f in fields(PolicySFTConfig):
        if f.name == "seed":
            continue
        dest = "sft_" + f.name
        sft.add_argument(_flag(dest), type=type(f.default),
                         default=None if dest in per_task else f.default,
                         help=_default_help(dest, f.default))
    run = p.add_argument_group("bench run (see editalign.bench.runner)")
    run.add_argument("--bench", help="directory written by `editalign bench init`")
    run.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                     help=f"comma-separated methods, or all ({', '.join(METHODS)}) "
                     "(default: %(default)s)")
    run.add_argument("--method-args", dest="method_args", action="append", default=[],
                     metavar="STAGE=FLAGS",
                     help="extra `editalign train` flags for one stage, appended last (they "
                     "win), e.g. --method-args 'figa=--gamma 0.5'; STAGE is a method, rm, "
                     "token-rm, ppo (every PPO arm) or grpo (every GRPO arm); repeatable")
    run.add_argument("--seeds", default="0", help="comma-separated seeds: one full run (every "
                     "method trained and evaluated) per seed (default: %(default)s)")
    run.add_argument("--num-seeds", type=int, default=None,
                     help="shorthand for --seeds 0,1,...,N-1")
    for f in fields(RunConfig):
        if f.name in NOT_RUN_FLAGS:
            continue
        if f.name == "tuned":
            run.add_argument("--untuned", dest="run_tuned", action="store_false",
                             help="every trainer's own defaults instead of the settings tuned "
                             "on the task's tuning task (editalign.bench.tuned.TUNED)")
            continue
        default = f.default if f.default is not MISSING else None
        kind = {"eval_limit": int, "learning_rate": float,
                "ppo_learning_rate": float}.get(f.name, type(default))
        run.add_argument(_flag("run_" + f.name) if f.name in ("batch_size",) else _flag(f.name),
                         dest="run_" + f.name, type=kind, default=default,
                         help="(default: the task's tuned rate, editalign.bench.tuned.TUNED)"
                         if f.name in ("learning_rate", "ppo_learning_rate")
                         else f"(default: {default})")
    gen = p.add_argument_group("edit pairs from the initial policy's samples")
    gen.add_argument("--pair-prompts", type=int,
                     default=None if "pair_prompts" in per_task else PAIR_DEFAULTS["pair_prompts"],
                     help="sample at most this many training prompts (a seeded random subset; "
                     "0: all) " + _default_help("pair_prompts", PAIR_DEFAULTS["pair_prompts"]))
    gen.add_argument("--samples-per-prompt", type=int,
                     default=None if "samples_per_prompt" in per_task
                     else PAIR_DEFAULTS["samples_per_prompt"],
                     help=_default_help("samples_per_prompt", PAIR_DEFAULTS["samples_per_prompt"]))
    gen.add_argument("--max-new-tokens", type=int, default=96)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    if not args.out:
        raise ValueError("--out is required")
    if args.action == "run":
        return _cmd_run(args)
    with progress_bars_off_unless_terminal():  # off a terminal: its summary lines only
        return _cmd_init(args)


def _cmd_init(args: argparse.Namespace) -> int:
    from editalign.bench.init import PairSampling, init_bench, summary_table
    from editalign.generation import SamplingConfig

    apply_preset(args)
    apply_task_defaults(args)
    started = time.perf_counter()
    out = claim_dir(args.out, flag="--out", command="bench init", legacy=INIT_LEGACY,
                    inputs={"--model": args.model})
    config, sft = _init_settings(args)
    # The grounded task's cards need their words in the tokenizer (tiny-bench-grounded).
    args.model = args.model or ("tiny-bench-grounded" if config.task == "grounded"
                                else "tiny-bench")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=config.seed,
                              batch_size=args.batch_size)
    summary = init_bench(out, config, sft, args.model,
                         PairSampling(args.pair_prompts, args.samples_per_prompt, sampling))
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(summary_table(summary))
    print(f"wrote {summary['pairs']['n']} edit pairs ({summary['pairs']['with_edit']} with an "
          f"edit) to {out / 'pairs.train.jsonl'} ({summary['seconds']:.0f} s)")
    return 0


# `bench init` directories written before the output marker.
INIT_LEGACY = (("config.json", "world.json"),)


def _init_settings(args: argparse.Namespace) -> tuple[BenchConfig, PolicySFTConfig]:
    config = BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})
    sft = PolicySFTConfig(seed=config.seed, **{f.name: getattr(args, "sft_" + f.name)
                                               for f in fields(PolicySFTConfig)
                                               if f.name != "seed"})
    return config, sft


def _check_init_done(bench: Path, args: argparse.Namespace) -> None:
    """An earlier ``bench init`` in OUT/bench is reused only if it was made with this run's
    task settings; otherwise its policy and pairs would be reported under settings that did
    not make them."""
    summary = json.loads((bench / "summary.json").read_text())
    config, sft = _init_settings(args)
    difference = first_difference({"config": summary.get("config"), "sft": summary.get("sft")},
                                  json.loads(json.dumps({"config": config.to_dict(),
                                                         "sft": sft.__dict__})))
    if difference:
        raise OutputError(f"{bench} was made with other settings ({difference}): rerun with "
                          "the same settings to resume, or use another --out")


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Set the preset's sizes on every option still at its default (explicit flags win)."""
    preset = getattr(args, "preset", None)
    if not preset:
        return args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([args.action]))
    for dest, value in PRESETS[preset].items():
        if dest == "num_seeds" and args.seeds != defaults["seeds"]:
            continue  # explicit --seeds is also an explicit number of seeds
        if getattr(args, dest) == defaults[dest]:
            setattr(args, dest, value)
    return args


# --method-args stages: every method (the online arms too: their flags come after their base
# method's), the reward models, ppo (every PPO arm) and grpo (every GRPO arm).
STAGES = (*METHODS, *ONLINE, "rm", "token-rm", "ppo", "grpo")


def parse_method_args(items: list[str] | dict[str, Any] | None) -> dict[str, list[str]]:
    """``["figa=--gamma 0.5", "ppo=--kl_coef 0.1"]`` (or a YAML mapping of the same) ->
    ``{"figa": ["--gamma", "0.5"], "ppo": ["--kl_coef", "0.1"]}``; repeated stages add up."""
    import shlex

    if isinstance(items, dict):
        items = [f"{k}={v if isinstance(v, str) else shlex.join(map(str, v))}"
                 for k, v in items.items()]
    extra: dict[str, list[str]] = {}
    for item in items or []:
        stage, sep, flags = item.partition("=")
        stage = stage.strip()
        if not sep or stage not in STAGES:
            raise ValueError(f"--method-args {item!r}: expected STAGE=FLAGS with STAGE one of "
                             f"{', '.join(STAGES)}")
        extra.setdefault(stage, []).extend(shlex.split(flags))
    return extra


def _cmd_run(args: argparse.Namespace) -> int:
    apply_preset(args)
    apply_task_defaults(args)
    seeds = (list(range(args.num_seeds)) if args.num_seeds else
             [int(x) for x in str(args.seeds).split(",") if x.strip()])
    claim_run_dir(Path(args.out), Path(args.bench) if args.bench else None, seeds)
    if not args.bench and args.preset:
        # The whole pipeline: init into OUT/bench unless an earlier run finished it
        # (summary.json is written last, so it marks a complete init).
        bench = Path(args.out) / "bench"
        if (bench / "summary.json").is_file():
            done = json.loads((bench / "config.json").read_text()).get("task", "facts")
            if done != args.task:
                raise ValueError(f"{bench} holds the {done!r} task, not {args.task!r}: use "
                                 "another --out")
            _check_init_done(bench, args)
            print(f"bench init: done earlier ({bench / 'summary.json'}), skipped")
        else:
            mark_dir(bench, "bench init")  # its stage log goes in first
            with stage_output(bench / STAGE_LOG, f"bench init -> {bench}"):
                run(argparse.Namespace(**{**vars(args), "action": "init",
                                                "out": str(bench)}))
        args.bench = str(bench)
    if not args.bench:
        raise ValueError("--bench (a directory written by `editalign bench init`) is required")
    methods = list(METHODS) if args.methods.strip() == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    config = RunConfig(methods=methods,
                       seeds=seeds,
                       extra=parse_method_args(args.method_args),
                       **{f.name: getattr(args, "run_" + f.name) for f in fields(RunConfig)
                          if f.name not in NOT_RUN_FLAGS})
    run_benchmark(args.bench, args.out, config)
    print((Path(args.out) / "results.md").read_text())
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
