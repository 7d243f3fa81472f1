"""``editalign bench run``: train every method on the same edit pairs, measure win rates.

Input: a directory written by ``editalign bench init`` (the initial policy, its revised
samples ``pairs.train.jsonl``, the held-out ``prompts.test.jsonl``). For every method the
runner calls the method's own ``editalign train`` entry point with the same flags (same
starting policy, pairs, optimizer steps, batch size, learning rate and seed) and then
``evaluate_winrate`` against the initial policy with the gold judge on the held-out
prompts. Methods:

- ``sft``: TRL SFT on the revised responses;
- ``dpo``: TRL DPO, revised preferred over original;
- ``dpo-sft``: TRL DPO plus SFT on the revised side (RPO);
- ``figa``: the FIGA loss;
- ``ppo-seq``: a sequence-level reward model (``rm``) then PPO with its last-token reward;
- ``ppo-token``: a token-level reward model (``token-rm``) then PPO with dense rewards;
- ``ppo-dpo``: PPO with the dense implicit reward β·(log π_DPO − log π_ref) of the run's
  ``dpo`` policy (RTO): a dense reward that needs no edit labels, only the pairs;
- ``grpo-seq``, ``grpo-token``, ``grpo-dpo``: the same three rewards with TRL's GRPO
  (``editalign train grpo``: group-normalised outcome, plus the token term for the dense
  rewards), on the same reward models, prompts and budget as the PPO arms.

The RL arms are :class:`~editalign.train.rl_stage.RLMethod` objects run by the one RL
stage (:func:`~editalign.train.rl_stage.run_rl_stage`, the loop's too); the PPO arms share
every PPO hyper-parameter and differ only in the reward, and so do the GRPO arms.
Only pairs with an edit are used (a pair whose sample needed no fix carries no edit
signal), identically for all methods. Results: ``results.json`` and ``results.md``, written
with :mod:`editalign.bench.results`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from editalign.bench.judge import GoldWinJudge
from editalign.bench.online import ONLINE, ONLINE_ROUNDS, train_online
from editalign.bench.report import write_report
from editalign.bench.results import (
    EVAL_DONE,
    HELD_OUT_PAIRS,
    TRAIN_DONE,
    comparisons,
    comparisons_table,
    error_breakdown,
    results_table,
    reward_model_eval,
    write_results,
)
from editalign.bench.tuned import TUNED, TunedSettings
from editalign.data.jsonl import read_jsonl
from editalign.data.pairs import load_pairs, save_pairs_jsonl
from editalign.eval.winrate import evaluate_winrate
from editalign.generation import SamplingConfig
from editalign.outputs import (
    LOCK,
    claim_dir,
    hold_lock,
    mark_dir,
    read_done,
    write_done,
    write_text,
)
from editalign.train import rl_stage
from editalign.train.common import run_trainer

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "dpo-sft", "figa", "ppo-seq", "ppo-token", "ppo-dpo", "grpo-seq",
           "grpo-token", "grpo-dpo")
# The RL arms: trainer × reward source (editalign.train.rl_stage).
RL_ARMS = {"ppo-seq": ("ppo", "sequence"), "ppo-token": ("ppo", "token"),
           "ppo-dpo": ("ppo", "dpo"), "grpo-seq": ("grpo", "sequence"),
           "grpo-token": ("grpo", "token"), "grpo-dpo": ("grpo", "dpo")}
# What `bench run` trains unless --methods says otherwise (`--methods all`: every method):
# the first task's reported six, so its quick run (the demo) keeps its time.
DEFAULT_METHODS = ("sft", "dpo", "dpo-sft", "figa", "ppo-seq", "ppo-token")
# The `editalign train` command of each supervised method, and the flags that make it that
# method: dpo-sft is DPO plus SFT on the revised side (RPO, Pang et al. 2024; TRL 1.x writes
# it as two weighted loss types), the strongest pairwise baseline we know to run.
SUPERVISED = {"sft": ("sft", []), "dpo": ("dpo", []), "figa": ("figa", []),
              "dpo-sft": ("dpo", ["--loss_type", "sigmoid", "sft", "--loss_weights", "1", "1"])}

# TRL's DPOConfig β, what `ppo-dpo` reads the DPO policy with when no --beta was given.
DPO_DEFAULT_BETA = rl_stage.DPO_DEFAULT_BETA


@dataclass
class RunConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    max_steps: int = 100  # optimizer steps of sft / dpo / figa and of each reward model
    batch_size: int = 16
    learning_rate: float | None = None  # sft / dpo / dpo-sft / figa; None: the task's tuned one
    rm_learning_rate: float = 1e-3
    ppo_iterations: int = 100
    ppo_rollout_batch_size: int = 16
    ppo_learning_rate: float | None = None  # every PPO arm; None: the task's tuned one
    seed: int = 0  # the seed of one run (set from ``seeds`` by run_benchmark)
    seeds: list[int] = field(default_factory=lambda: [0])  # one full run per seed
    eval_limit: int | None = None
    eval_max_new_tokens: int = 64
    eval_temperature: float = 1.0
    eval_samples_per_prompt: int = 4  # responses per held-out prompt and side
    eval_batch_size: int = 72
    # Extra `editalign train` flags per stage, appended last so they override the shared
    # and tuned ones: keys are methods, the reward models (rm, token-rm), ppo (every PPO
    # arm) and grpo (every GRPO arm; keep arm-specific RL flags for the reward).
    extra: dict[str, list[str]] = field(default_factory=dict)
    tuned: bool = True  # apply the task's tuned args (False: every trainer's own defaults)
    # Whose tuned settings apply: set by run_benchmark from the bench directory's task.
    task: str = "facts"

    @property
    def tuned_settings(self) -> TunedSettings:
        if self.task not in TUNED:
            raise ValueError(f"no tuned settings for task {self.task!r}; known: "
                             f"{', '.join(TUNED)}")
        return TUNED[self.task]

    def stage_args(self, stage: str) -> list[str]:
        tuned = self.tuned_settings.args.get(stage, []) if self.tuned else []
        return [*tuned, *self.extra.get(stage, [])]

    def method_learning_rate(self, method: str) -> float:
        """The learning rate given, else the task's tuned one (also with ``tuned=False``:
        the trainers' own defaults are no rate for this budget)."""
        return self.learning_rate if self.learning_rate is not None \
            else self.tuned_settings.learning_rates[method]

    def ppo_lr(self) -> float:
        return self.ppo_learning_rate if self.ppo_learning_rate is not None \
            else self.tuned_settings.ppo_learning_rate

    def dpo_beta(self) -> float:
        """The β the run's dpo arm trains with: a `--beta` in its extra flags, else the
        tuned one (``tuned``), else TRL's default."""
        import argparse

        given = argparse.ArgumentParser(add_help=False)
        given.add_argument("--beta", type=float)
        extra, _ = given.parse_known_args(self.extra.get("dpo", []))
        if extra.beta is not None:
            return float(extra.beta)
        return self.tuned_settings.dpo_beta if self.tuned else DPO_DEFAULT_BETA

    def rl_method(self, arm: str) -> rl_stage.RLMethod:
        """The RL arm as the one RL stage runs it: trainer, reward, rate and flags."""
        trainer, reward = RL_ARMS[arm]
        rate = self.ppo_lr()
        if trainer == "grpo" and self.tuned_settings.grpo_learning_rate is not None \
                and self.ppo_learning_rate is None:
            rate = self.tuned_settings.grpo_learning_rate
        return rl_stage.RLMethod(trainer, reward, learning_rate=rate,
                                 args=tuple(self.stage_args(arm)),
                                 reward_args=tuple(self.stage_args(REWARD_STAGES[reward])),
                                 dpo_beta=self.dpo_beta())


def _common(config: RunConfig, lr: float) -> list[str]:
    return ["--max_steps", str(config.max_steps),
            "--per_device_train_batch_size", str(config.batch_size),
            "--learning_rate", str(lr), "--seed", str(config.seed),
            # One schedule for every method (TRL's trainers default to linear decay, FIGA's
            # official code to constant): a method must not win by its schedule.
            "--lr_scheduler_type", "linear",
            "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", str(max(1, min(10, config.max_steps // 5))),
            "--disable_tqdm", "True"]


STAGE_LOG = "stage.log"  # in each trained stage's --output_dir (non-terminal runs)
EVAL_LOG = "eval.log"  # in <run>/<method>/, the evaluation's output (non-terminal runs)


def console_is_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def stage_output(log_path: Path, label: str, *, quiet: bool | None = None
                 ) -> Iterator[dict[str, str]]:
    """Run one stage (a trainer, an evaluation) with its output in ``log_path``.

    On a terminal (``quiet=None`` and stderr a TTY) nothing changes: progress bars and logs
    show as they come. Otherwise (a log file, CI, the demo piped somewhere) everything the
    stage prints, logs or warns goes to ``log_path``, progress bars are off, and the console
    gets one line: ``LABEL: SUMMARY, N s (log: PATH)`` (the caller may put a ``summary``
    into the yielded dict), or on failure the error and where the full log is.
    """
    if quiet is None:
        quiet = not console_is_terminal()
    note: dict[str, str] = {}
    if not quiet:
        yield note
        return
    console = sys.stdout
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log, ExitStack() as stack:
        stack.enter_context(_log_handlers_to(log))  # first: it looks for today's console
        stack.enter_context(redirect_stdout(log))
        stack.enter_context(redirect_stderr(log))
        stack.enter_context(progress_bars_off())
        try:
            yield note
        except BaseException as err:
            print(f"{label}: failed after {time.perf_counter() - started:.1f} s "
                  f"({type(err).__name__}: {err}); full log: {log_path}", file=console,
                  flush=True)
            raise
    summary = f"{note['summary']}, " if note.get("summary") else ""
    print(f"{label}: {summary}{time.perf_counter() - started:.1f} s (log: {log_path})",
          file=console, flush=True)


@contextmanager
def _log_handlers_to(stream: IO[str]) -> Iterator[None]:
    """Point every logging handler that writes to the console (the root's, and libraries'
    own such as transformers') at ``stream`` for the duration."""
    consoles = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    swapped = []
    for lg in loggers:
        for handler in lg.handlers:
            if type(handler) is logging.StreamHandler and id(handler.stream) in consoles:
                swapped.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, previous in swapped:
            handler.setStream(previous)


def progress_bars_off_unless_terminal() -> contextlib.AbstractContextManager[None]:
    """:func:`progress_bars_off` when the console is not a terminal (a log file, CI): the
    console then gets one line per stage."""
    return contextlib.nullcontext() if console_is_terminal() else progress_bars_off()


@contextmanager
def progress_bars_off() -> Iterator[None]:
    """transformers', datasets' and huggingface_hub's progress bars off, restored after."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    states = (hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(),
              hub.are_progress_bars_disabled())
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if states[0]:
            hf_logging.enable_progress_bar()
        if states[1]:
            datasets.enable_progress_bars()
        if not states[2]:
            hub.enable_progress_bars()


def _train(method: str, argv: list[str]) -> float:
    """``editalign train METHOD ARGV`` in this process; its output goes to ``stage.log`` in
    its ``--output_dir`` when the console is not a terminal (see :func:`stage_output`)."""
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    mark_dir(output_dir, "train")  # the stage log goes in first; the trainer's output is ours
    started = time.perf_counter()
    with stage_output(output_dir / STAGE_LOG, f"train {method} -> {output_dir}"):
        logger.info("editalign train %s %s", method, " ".join(argv))
        code = run_trainer(method, argv)
        if code:
            raise RuntimeError(f"editalign train {method} exited with {code}")
    return time.perf_counter() - started


def train_method(method: str, bench: Path, pairs: Path, out: Path, config: RunConfig
                 ) -> tuple[Path, float]:
    """Train one method; returns the policy directory and the seconds it took."""
    policy = str(bench / "policy")
    extra = config.stage_args(method)
    target = out / method
    marker = target / TRAIN_DONE
    done = read_done(marker, train_settings(config))  # refused when other settings made it
    if done is not None:  # resume: this stage finished in an earlier (interrupted) run
        logger.info("skip training %s (done: %s)", method, marker)
        policy_dir = target / f"round{ONLINE_ROUNDS}" / "policy" if method in ONLINE else target
        return policy_dir, float(done["seconds"])
    target, seconds = _train_method(method, bench, pairs, out, config, policy, extra)
    write_done(marker, train_settings(config), {"method": method, "seconds": seconds})
    return target, seconds


def train_settings(config: RunConfig) -> dict[str, Any]:
    """What a trained stage depends on: every setting of the run but the methods, the seeds
    (each seed's stages have their own directory) and the evaluation's, and the task's tuned
    table (rates and flags live in code: a stage trained before the table changed is not
    reused after)."""
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("methods", "seeds") and not k.startswith("eval_")}
    return {**settings, "tuned_settings": asdict(config.tuned_settings)}


def eval_settings(config: RunConfig) -> dict[str, Any]:
    """What an evaluated stage depends on: its training's settings and the evaluation's."""
    evaluation = {k: v for k, v in asdict(config).items() if k.startswith("eval_")}
    return {**train_settings(config), **evaluation}


def _rl_flags(config: RunConfig, trainer: str) -> list[str]:
    """The settings every arm of one RL trainer shares (the same budget for all three; the
    learning rate comes with the method). GRPO gets PPO's budget: as many optimizer steps as
    PPO iterations, each on ``ppo_rollout_batch_size`` sampled responses (groups of
    ``GRPO_GROUP`` per prompt), responses as long as PPO's, and PPO's KL coefficient."""
    if trainer == "ppo":
        return ["--num_iterations", str(config.ppo_iterations),
                "--rollout_batch_size", str(config.ppo_rollout_batch_size),
                "--per_device_train_batch_size", str(config.batch_size),
                "--seed", str(config.seed),
                "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "True",
                *config.stage_args("ppo")]
    from dataclasses import fields

    from editalign.train.ppo import PPOConfig

    ppo = {f.name: f.default for f in fields(PPOConfig)}
    return ["--max_steps", str(config.ppo_iterations),
            "--per_device_train_batch_size", str(config.ppo_rollout_batch_size),
            "--num_generations", str(GRPO_GROUP),
            "--max_completion_length", str(ppo["max_new_tokens"]),
            "--beta", str(ppo["kl_coef"]), "--seed", str(config.seed),
            "--logging_steps", str(max(1, min(10, config.ppo_iterations // 5))),
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "True",
            *config.stage_args("grpo")]


GRPO_GROUP = 4  # completions per prompt in the GRPO arms
# The stage whose tuned/extra flags each reward's trainer takes.
REWARD_STAGES = {"token": "token-rm", "sequence": "rm", "dpo": "dpo"}


def _train_stage(step: str, trainer: str, argv: list[str], config: RunConfig) -> float:
    """One step of the RL stage; the reward model it trains gets a done marker keyed by the
    run's settings (trained once per run, kept when RL is what got killed)."""
    seconds = _train(trainer, argv)
    if step == "reward_model":
        reward_dir = Path(argv[argv.index("--output_dir") + 1])
        write_done(reward_dir / TRAIN_DONE, train_settings(config),
                   {"method": trainer, "seconds": seconds})
    return seconds


def _train_method(method: str, bench: Path, pairs: Path, out: Path, config: RunConfig,
                  policy: str, extra: list[str]) -> tuple[Path, float]:
    target = out / method
    if method in ONLINE:  # figa-online, sft-online: 3 rounds, same budget (bench/online.py)
        base = ONLINE[method]
        trainer, flags = SUPERVISED[base]
        extra = [*config.stage_args(base), *config.extra.get(method, [])]

        def train_round(round_policy: Path, data: Path, round_out: Path, steps: int) -> None:
            run = replace(config, max_steps=steps)
            _train(trainer, ["--model", str(round_policy), "--data", str(data),
                             "--output_dir", str(round_out),
                             *_common(run, config.method_learning_rate(method)), *flags,
                             *extra])

        # Its sampling and revising run in this process: keep the console one line per stage.
        with progress_bars_off_unless_terminal():
            return train_online(method, bench, out, config, train_round)
    if method in SUPERVISED:
        trainer, flags = SUPERVISED[method]
        seconds = _train(trainer, ["--model", policy, "--data", str(pairs), "--output_dir",
                                   str(target),
                                   *_common(config, config.method_learning_rate(method)),
                                   *flags, *extra])
        return target, seconds
    if method in RL_ARMS:
        rl = config.rl_method(method)
        if rl.reward == "dpo":
            # The DPO policy of this run (trained here unless `dpo` already ran; its time is
            # reported with the dpo arm), read with the β it was trained with.
            reward_dir, _ = train_method("dpo", bench, pairs, out, config)
            reward_pairs = None  # given: the dpo arm's policy
        else:
            reward_dir = out / rl.reward_trainer  # the PPO and GRPO arms of a run share it
            reward_pairs = pairs
        held_out = pairs.parent / HELD_OUT_PAIRS
        reward_flags = [*_common(config, config.rm_learning_rate),
                        *(["--eval_data", str(held_out)] if held_out.is_file() else [])]
        seconds = rl_stage.run_rl_stage(
            rl, policy=policy, prompts=bench / "prompts.train.jsonl", output_dir=target,
            reward_dir=reward_dir, pairs=reward_pairs, reward_flags=reward_flags,
            rl_flags=_rl_flags(config, rl.trainer),
            reward_trained=lambda directory: read_done(directory / TRAIN_DONE,
                                                       train_settings(config)) is not None,
            execute=lambda step, trainer, argv: _train_stage(step, trainer, argv, config))
        return target, seconds
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


# `bench run` directories written before the output marker.
RUN_LEGACY = (("results.json",), ("pairs.edited.jsonl",), ("bench",))


def claim_run_dir(out: Path, bench: Path | None, seeds: Sequence[int] = (0,)) -> Path:
    """``--out`` of ``bench run`` checked and locked (see :mod:`editalign.outputs`).

    A run of one seed writes into OUT itself and holds it alone. A run of several seeds
    writes each seed into OUT/seed<N>: it holds those alone and OUT shared, so runs of other
    seeds can train into the same OUT at the same time (seeds sharded over processes or
    machines; each writes the results of its own seeds, and a last run over all of them,
    which finds every seed done, writes the combined results). A run sharing a seed with a
    running one is refused before any work, naming the seed."""
    target = claim_dir(out, flag="--out", command="bench run", legacy=RUN_LEGACY,
                       inputs={"--bench": bench}, shared=len(seeds) > 1)
    if len(seeds) > 1:
        for seed in seeds:
            seed_dir = target / f"seed{seed}"
            created = not seed_dir.exists()
            lock = hold_lock(seed_dir / LOCK, what=f"--out {out} (seed {seed})",
                             command="bench run")
            lock.created_dir = lock.created_dir or created
    return target


def bench_task(bench: Path) -> str:
    """The task a ``bench init`` directory holds (``facts`` for those written before tasks)."""
    path = bench / "config.json"
    return json.loads(path.read_text()).get("task", "facts") if path.is_file() else "facts"


def _check_methods_and_markers(config: RunConfig, out: Path) -> None:
    """Unknown methods, and a rerun with other settings, are refused before any work."""
    for method in config.methods:
        if method not in (*METHODS, *ONLINE):
            raise ValueError(f"unknown method {method!r}; choose from "
                             f"{', '.join([*METHODS, *ONLINE])}")
    for seed in config.seeds:
        run = replace(config, seed=seed)
        run_out = out / f"seed{seed}" if len(config.seeds) > 1 else out
        for method in config.methods:
            read_done(run_out / method / TRAIN_DONE, train_settings(run))
            read_done(run_out / method / EVAL_DONE, eval_settings(run))


def _edited_pairs(bench: Path, out: Path) -> tuple[Path, int]:
    """The bench's pairs with an edit, written into the run (the file every method trains
    on), and its held-out ones beside them; returns the file and how many."""
    pairs, _ = load_pairs(bench / "pairs.train.jsonl")
    edited = [p for p in pairs if p.has_edit]
    if not edited:
        raise ValueError(f"{bench}/pairs.train.jsonl has no pair with an edit")
    pairs_file = save_pairs_jsonl(edited, out / "pairs.edited.jsonl")
    if (bench / "pairs.test.jsonl").is_file():  # older bench dirs have none
        test_pairs, _ = load_pairs(bench / "pairs.test.jsonl")
        save_pairs_jsonl([p for p in test_pairs if p.has_edit], out / HELD_OUT_PAIRS)
    return pairs_file, len(edited)


def _evaluate(method: str, policy_dir: Path, reference: str, rows: list[dict[str, Any]],
              sampling: SamplingConfig, run_out: Path, run: RunConfig
              ) -> tuple[dict[str, Any], Any]:
    """One trained method's win rate against the initial policy, its error breakdown and
    (RL arms) its reward model's held-out figures."""
    started = time.perf_counter()
    samples = run_out / method / "eval_samples.jsonl"
    with stage_output(run_out / method / EVAL_LOG, f"eval {method} (seed {run.seed})") as note:
        result = evaluate_winrate(str(policy_dir), reference, rows, GoldWinJudge(), sampling,
                                  samples_out=samples)
        note["summary"] = (f"win rate {result.win_rate:.3f} "
                           f"[{result.ci_low:.3f}, {result.ci_high:.3f}]")
    entry = {"eval_seconds": time.perf_counter() - started, **result.to_dict(),
             "errors": error_breakdown(samples, rows, sampling.samples_per_prompt)}
    rm_eval = reward_model_eval(method, run_out)
    if rm_eval:
        entry["reward_model_eval"] = rm_eval
    return entry, result


def run_benchmark(bench: str | Path, out: str | Path, config: RunConfig | None = None,
                  *, report: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every method for every seed; resumable (see the done markers).

    Writes ``results.json``, ``results.md`` and (``report=True``) the plots and
    ``report.html`` of :mod:`editalign.bench.report`.
    """
    from tqdm.auto import tqdm

    bench, out = Path(bench), Path(out)
    config = config or RunConfig()
    claim_run_dir(out, bench, config.seeds)  # before any work: ours to write
    # The task is a property of the bench directory: its tuned settings apply.
    config = replace(config, task=bench_task(bench))
    _check_methods_and_markers(config, out)
    pairs_file, n_edited = _edited_pairs(bench, out)
    rows = read_jsonl(bench / "prompts.test.jsonl")
    if config.eval_limit:
        rows = rows[:config.eval_limit]
    results = []
    reference = str(bench / "policy")
    for seed in config.seeds:
        run = replace(config, seed=seed)
        # Each seed trains every method afresh and samples the evaluation with that seed.
        run_out = out / f"seed{seed}" if len(config.seeds) > 1 else out
        sampling = SamplingConfig(max_new_tokens=config.eval_max_new_tokens,
                                  temperature=config.eval_temperature, seed=seed,
                                  batch_size=config.eval_batch_size,
                                  samples_per_prompt=config.eval_samples_per_prompt)
        bar = tqdm(config.methods, desc=f"bench run (seed {seed})", unit="method",
                   disable=not progress or not console_is_terminal())
        for method in bar:
            bar.set_postfix(method=method)
            done = run_out / method / EVAL_DONE
            entry = read_done(done, eval_settings(run))
            if entry is not None:  # resume: trained and evaluated in an earlier run
                results.append(entry)
                logger.info("skip %s seed %s (done: %s)", method, seed, done)
                continue
            policy_dir, seconds = train_method(method, bench, pairs_file, run_out, run)
            evaluated, result = _evaluate(method, policy_dir, reference, rows, sampling,
                                          run_out, run)
            entry = {"method": method, "seed": seed, "train_seconds": seconds, **evaluated}
            write_done(done, eval_settings(run), entry)
            results.append(entry)
            if console_is_terminal():
                bar.write(result.table().splitlines()[-1])
            # After every method, so an interrupted run still leaves what it measured.
            write_results(out, config, bench, n_edited, results)
    found = comparisons(out, config)
    write_results(out, config, bench, n_edited, results, found)
    table = results_table(results)
    if found:
        table += "\n\n" + comparisons_table(found)
    write_text(out / "results.md", table + "\n")
    if report:
        with stage_output(out / "report.log", f"report -> {out / 'report.html'}"):
            write_report(out, bench, results)
    return results


