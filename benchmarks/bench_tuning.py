"""Hyper-parameter selection for `editalign bench run`, on a *tuning* task.

The reported benchmark (task seed 0) must not pick its own hyper-parameters, so every
choice is made here on a task built from another seed (default 1: another world, other
prompts, another initial policy), then frozen into the benchmark's defaults.

Each grid point is one `editalign bench run` of a subset of methods into its own directory
(so reruns resume), two at a time on this 2-core machine, one thread each. The result is
the win rate of every (method, setting) against the tuning task's initial policy on its
held-out prompts, with KL and gold score, in ``benchmarks/results/bench_tuning.{json,md}``.

    python benchmarks/bench_tuning.py                      # every grid (~40 min, 2 cores)
    python benchmarks/bench_tuning.py --only linear,ppo2   # some grids
    python benchmarks/bench_tuning.py --task grounded --only grounded \
        --bench bench-tuning-grounded/bench --out bench-tuning-grounded/runs \
        --tag bench_tuning_grounded                         # the grounded task's grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# Shared by every grid point: the benchmark's budget (steps, batch, PPO iterations) and
# evaluation; a point only changes the flags it names.
COMMON = ["--seeds", "0", "--max-steps", "100", "--run-batch-size", "16",
          "--ppo-iterations", "100", "--eval-samples-per-prompt", "4",
          "--eval-batch-size", "72", "--eval-max-new-tokens", "64",
          # every trainer's own defaults: a point sets exactly what its name says
          "--untuned"]

# name -> (methods, extra flags)
SUPERVISED: dict[str, tuple[str, list[str]]] = {
    "sft lr1e-4": ("sft", ["--learning-rate", "1e-4"]),
    "sft lr3e-4": ("sft", ["--learning-rate", "3e-4"]),
    "dpo lr3e-5": ("dpo", ["--learning-rate", "3e-5"]),
    "dpo lr1e-4": ("dpo", ["--learning-rate", "1e-4"]),
    "figa lr3e-5 g0": ("figa", ["--learning-rate", "3e-5"]),
    "figa lr1e-4 g0": ("figa", ["--learning-rate", "1e-4"]),
    "figa lr1e-4 g0.3": ("figa", ["--learning-rate", "1e-4", "--method-args",
                                  "figa=--gamma 0.3"]),
    "figa lr1e-4 g1": ("figa", ["--learning-rate", "1e-4", "--method-args", "figa=--gamma 1"]),
    "figa lr3e-4 g1": ("figa", ["--learning-rate", "3e-4", "--method-args", "figa=--gamma 1"]),
}
# Second round, around the best first-round FIGA point (γ > 0 at lr 1e-4).
FIGA: dict[str, tuple[str, list[str]]] = {
    f"figa lr1e-4 g{g} b{b}": ("figa", ["--learning-rate", "1e-4", "--method-args",
                                       f"figa=--gamma {g} --beta {b}"])
    for g in (0.1, 0.3, 0.5) for b in (0, 0.5, 1)
} | {
    "figa lr1e-4 g0.3 b0.5 unlikelihood": ("figa", [
        "--learning-rate", "1e-4", "--method-args", "figa=--gamma 0.3 --negative unlikelihood"]),
    "figa lr1e-4 g0.3 b0.5 nogate": ("figa", [
        "--learning-rate", "1e-4", "--method-args", "figa=--gamma 0.3 --gate none"]),
}
PPO: dict[str, tuple[str, list[str]]] = {
    "ppo lr3e-5 eq0": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5"]),
    "ppo lr3e-5 eq1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", "--method-args",
                                             "token-rm=--equal_weight 1"]),
    "ppo lr1e-4 eq1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "1e-4", "--method-args",
                                             "token-rm=--equal_weight 1"]),
    "ppo lr1e-4 eq1 kl0.02": ("ppo-seq,ppo-token", [
        "--ppo-learning-rate", "1e-4", "--method-args", "token-rm=--equal_weight 1",
        "--method-args", "ppo=--kl_coef 0.02"]),
}

# Second round for the baselines, so they get a comparable share of the tuning effort.
BASELINES: dict[str, tuple[str, list[str]]] = {
    "sft lr3e-5": ("sft", ["--learning-rate", "3e-5"]),
    "sft lr1e-3": ("sft", ["--learning-rate", "1e-3"]),
    "dpo lr1e-5": ("dpo", ["--learning-rate", "1e-5"]),
    "dpo lr3e-5 beta0.3": ("dpo", ["--learning-rate", "3e-5", "--method-args",
                                   "dpo=--beta 0.3"]),
    "dpo lr1e-4 beta0.3": ("dpo", ["--learning-rate", "1e-4", "--method-args",
                                   "dpo=--beta 0.3"]),
    # DPO + SFT on the revised side (RPO; TRL 1.x spells it as two weighted loss types).
    "dpo+sft lr3e-5": ("dpo", ["--learning-rate", "3e-5", "--method-args",
                               "dpo=--loss_type sigmoid sft --loss_weights 1 1"]),
    "dpo+sft lr1e-4": ("dpo", ["--learning-rate", "1e-4", "--method-args",
                               "dpo=--loss_type sigmoid sft --loss_weights 1 1"]),
}
# Third round: SFT did best at the top of its learning-rate range, so every method gets the
# same range {3e-5, 1e-4, 3e-4, 1e-3} at its best other settings.
FIGA_BEST = ["--method-args", "figa=--gamma 0.5 --beta 1"]
LR_RANGE: dict[str, tuple[str, list[str]]] = {
    "figa lr3e-5 g0.5 b1": ("figa", ["--learning-rate", "3e-5", *FIGA_BEST]),
    "figa lr3e-4 g0.5 b1": ("figa", ["--learning-rate", "3e-4", *FIGA_BEST]),
    "figa lr1e-3 g0.5 b1": ("figa", ["--learning-rate", "1e-3", *FIGA_BEST]),
    "dpo lr3e-4": ("dpo", ["--learning-rate", "3e-4"]),
    "dpo lr1e-3": ("dpo", ["--learning-rate", "1e-3"]),
    "dpo lr3e-4 beta0.3": ("dpo", ["--learning-rate", "3e-4", "--method-args",
                                   "dpo=--beta 0.3"]),
    "dpo+sft lr3e-4": ("dpo", ["--learning-rate", "3e-4", "--method-args",
                               "dpo=--loss_type sigmoid sft --loss_weights 1 1"]),
    "dpo+sft lr1e-3": ("dpo", ["--learning-rate", "1e-3", "--method-args",
                               "dpo=--loss_type sigmoid sft --loss_weights 1 1"]),
}
# Fourth round: the NLL-anchored methods were best at the top of that range; extend it, and
# ablate FIGA at its best learning rate (γ = 1, β = 0 is SFT exactly).
DPO_SFT = ["--method-args", "dpo=--loss_type sigmoid sft --loss_weights 1 1"]
LR_TOP: dict[str, tuple[str, list[str]]] = {
    "sft lr3e-3": ("sft", ["--learning-rate", "3e-3"]),
    "figa lr3e-3 g0.5 b1": ("figa", ["--learning-rate", "3e-3", *FIGA_BEST]),
    "dpo+sft lr3e-3": ("dpo", ["--learning-rate", "3e-3", *DPO_SFT]),
    "figa lr1e-3 g1 b1": ("figa", ["--learning-rate", "1e-3", "--method-args",
                                   "figa=--gamma 1 --beta 1"]),
    "figa lr1e-3 g0.5 b0": ("figa", ["--learning-rate", "1e-3", "--method-args",
                                     "figa=--gamma 0.5 --beta 0"]),
    "figa lr1e-3 g0.3 b1": ("figa", ["--learning-rate", "1e-3", "--method-args",
                                     "figa=--gamma 0.3 --beta 1"]),
    "figa lr1e-3 g0 b0.5": ("figa", ["--learning-rate", "1e-3"]),
}
# Fifth round: SFT was still rising at 3e-3 and FIGA (β = 1) collapsed there; find SFT's peak
# and give FIGA a smaller push-down at that rate.
LR_PEAK: dict[str, tuple[str, list[str]]] = {
    "sft lr1e-2": ("sft", ["--learning-rate", "1e-2"]),
    "figa lr3e-3 g1 b0.5": ("figa", ["--learning-rate", "3e-3", "--method-args",
                                     "figa=--gamma 1 --beta 0.5"]),
    "figa lr3e-3 g1 b0.25": ("figa", ["--learning-rate", "3e-3", "--method-args",
                                      "figa=--gamma 1 --beta 0.25"]),
    "figa lr3e-3 g0.5 b0.25": ("figa", ["--learning-rate", "3e-3", "--method-args",
                                        "figa=--gamma 0.5 --beta 0.25"]),
    "figa lr1e-2 g1 b0.25": ("figa", ["--learning-rate", "1e-2", "--method-args",
                                      "figa=--gamma 1 --beta 0.25"]),
    "dpo+sft lr1e-2": ("dpo", ["--learning-rate", "1e-2", *DPO_SFT]),
}
# Sixth round, after every method got the same (linear-decay) schedule: FIGA had run at its
# official constant rate while TRL's SFT/DPO decay linearly, so FIGA's high-rate points above
# trained hotter than SFT's. SFT and DPO are unchanged by this (already linear).
LINEAR: dict[str, tuple[str, list[str]]] = {
    f"figa linear lr{lr} g{g} b{b}": ("figa", ["--learning-rate", lr, "--method-args",
                                              f"figa=--gamma {g} --beta {b}"])
    for lr, g, b in [("1e-3", 1, 1), ("1e-3", 0.5, 1), ("3e-3", 1, 1), ("3e-3", 1, 0.5),
                     ("3e-3", 1, 0.25), ("3e-3", 0.5, 1), ("3e-3", 0.5, 0.5), ("3e-3", 1, 0),
                     ("1e-3", 0, 0.5)]
}
EQ1 = ["--method-args", "token-rm=--equal_weight 1"]
# Second round around the best first-round PPO point (lr 3e-5, equal tokens trained to 0).
PPO2: dict[str, tuple[str, list[str]]] = {
    "ppo2 lr3e-5 eq1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", *EQ1]),
    "ppo2 lr3e-5 eq1 seed1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", *EQ1,
                                                    "--seeds", "1"]),
    "ppo2 lr3e-5 eq1 it200": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", *EQ1,
                                                    "--ppo-iterations", "200"]),
    "ppo2 lr5e-5 eq1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "5e-5", *EQ1]),
    "ppo2 lr3e-5 eq1 kl0.1": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", *EQ1,
                                                    "--method-args", "ppo=--kl_coef 0.1"]),
    "ppo2 lr3e-5 eq0.3": ("ppo-seq,ppo-token", ["--ppo-learning-rate", "3e-5", "--method-args",
                                                "token-rm=--equal_weight 0.3"]),
}

# The grounded task (`--task grounded`): one learning-rate range per supervised method at
# its first-task settings (DPO β 0.3; FIGA γ 1, β 0.25) and one PPO learning-rate range for
# the three PPO arms (token RM with kept tokens trained to 0; ppo-dpo reads a DPO policy
# trained at DPO's tuned rate with β 0.3), up to 10× the first task's PPO rate: at that rate
# no PPO arm changed a value in 100 iterations of the one-seed quick run.
GROUNDED_LRS = ("1e-4", "3e-4", "1e-3", "3e-3", "1e-2")
GROUNDED: dict[str, tuple[str, list[str]]] = {
    **{f"grounded sft lr{lr}": ("sft", ["--learning-rate", lr]) for lr in GROUNDED_LRS},
    **{f"grounded dpo lr{lr} beta0.3": ("dpo", ["--learning-rate", lr, "--method-args",
                                                 "dpo=--beta 0.3"])
       for lr in ("1e-5", "3e-5", *GROUNDED_LRS[:3])},
    **{f"grounded dpo-sft lr{lr}": ("dpo-sft", ["--learning-rate", lr]) for lr in GROUNDED_LRS},
    **{f"grounded figa lr{lr} g1 b0.25": ("figa", ["--learning-rate", lr, "--method-args",
                                                    "figa=--gamma 1 --beta 0.25"])
       for lr in GROUNDED_LRS},
    **{f"grounded ppo lr{lr}": ("ppo-seq,ppo-token,ppo-dpo", [
        "--ppo-learning-rate", lr, *EQ1, "--method-args", "dpo=--beta 0.3 --learning_rate 1e-4"])
       for lr in ("3e-5", "1e-4", "3e-4")},
}

# The GRPO arms (issue #23), on the first task's tuning task: one learning-rate range for the
# three arms together (the PPO arms' tuned 5e-5 sits inside it), at the PPO arms' other tuned
# settings (token RM with kept tokens trained to 0; DPO β 0.3 at its tuned rate); then, for
# the dense arm at the middle rate, the token coefficient λ, the per-token term and the group size.
GRPO_ARMS = "grpo-seq,grpo-token,grpo-dpo"
GRPO_BASE = [*EQ1, "--method-args", "dpo=--beta 0.3 --learning_rate 1e-4"]
GRPO_LRS = ("3e-5", "1e-4", "3e-4", "1e-3")
GRPO: dict[str, tuple[str, list[str]]] = {
    **{f"grpo lr{lr}": (GRPO_ARMS, ["--ppo-learning-rate", lr, *GRPO_BASE]) for lr in GRPO_LRS},
    **{f"grpo-token lr1e-4 coef{c}": ("grpo-token", [
        "--ppo-learning-rate", "1e-4", *GRPO_BASE, "--method-args", f"grpo=--token_coef {c}"])
       for c in ("0.3", "3")},
    "grpo-token lr1e-4 term-reward": ("grpo-token", [
        "--ppo-learning-rate", "1e-4", *GRPO_BASE, "--method-args",
        "grpo=--token_term reward"]),
    "grpo lr1e-4 G8": (GRPO_ARMS, ["--ppo-learning-rate", "1e-4", *GRPO_BASE, "--method-args",
                                   "grpo=--num_generations 8"]),
}

# The online arms (figa-online, sft-online: three rounds in the one-round budget) ran at the
# one-round tuned settings, whose learning-rate schedule restarts every round; here only the
# online arm's learning rate moves (its other flags stay the tuned ones: no --untuned), with
# the one-round arms at their tuned settings beside them on the same tuning task.
ONLINE_LRS = ("1e-4", "3e-4", "1e-3", "3e-3")
TUNED = "<tuned>"  # a point marker, not a flag: keep the benchmark's tuned settings
ONLINE_GRID: dict[str, tuple[str, list[str]]] = {
    "online one-round reference": ("figa,sft", [TUNED]),
    **{f"online {arm} lr{lr}": (arm, [TUNED, "--method-args", f"{arm}=--learning_rate {lr}"])
       for arm in ("figa-online", "sft-online") for lr in ONLINE_LRS},
}


def run_point(name: str, methods: str, flags: list[str], bench: Path, out: Path
              ) -> list[dict]:
    target = out / name.replace(" ", "_")
    common = COMMON
    if TUNED in flags:  # this point starts from the tuned settings instead of the defaults
        flags = [f for f in flags if f != TUNED]
        common = [f for f in COMMON if f != "--untuned"]
    cmd = [sys.executable, "-m", "editalign.cli", "bench", "run", "--bench", str(bench),
           "--out", str(target), "--methods", methods, *common, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # The log sits beside the run: `bench run` refuses an --out holding files it did not write.
    log_path = target.with_name(target.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{name}: exit {code}, see {log_path}")
    rows = json.loads((target / "results.json").read_text())["results"]
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return [{"point": name, "flags": flags, "method": r["method"], "win_rate": r["win_rate"],
             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "kl": r["kl"],
             "score_policy": r["score_policy"], "score_reference": r["score_reference"],
             "length_policy": r["length_policy"], "train_seconds": r["train_seconds"]}
            for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="bench-tuning/bench",
                        help="a tuning task from `bench init --seed 1` (built if missing)")
    parser.add_argument("--out", default="bench-tuning/runs")
    parser.add_argument("--only", default="supervised,ppo",
                        help="comma-separated grids: supervised, figa, baselines, lr_range, lr_top, "
                        "lr_peak, linear, ppo, ppo2, grounded (with --task grounded), online, grpo")
    parser.add_argument("--points", help="only the grid points whose name contains one of "
                        "these comma-separated strings (e.g. 'lr1e-4,G8'); the results file "
                        "keeps the rows of earlier points")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tag", default="bench_tuning")
    parser.add_argument("--task", default="facts", choices=["facts", "grounded"],
                        help="the task the tuning task is built as (with --only grounded)")
    args = parser.parse_args()
    grids = {"supervised": SUPERVISED, "figa": FIGA, "baselines": BASELINES,
             "lr_range": LR_RANGE, "lr_top": LR_TOP, "lr_peak": LR_PEAK, "linear": LINEAR,
             "ppo": PPO, "ppo2": PPO2, "grounded": GROUNDED, "online": ONLINE_GRID,
             "grpo": GRPO}
    grid = {name: point for g in args.only.split(",") for name, point in grids[g].items()}
    if args.points:
        wanted = args.points.split(",")
        grid = {name: point for name, point in grid.items() if any(w in name for w in wanted)}
        if not grid:
            raise SystemExit(f"--points {args.points}: no point of --only {args.only} matches")
    bench, out = Path(args.bench), Path(args.out)
    if not (bench / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "editalign.cli", "bench", "init", "--out",
                        str(bench), "--seed", "1", "--task", args.task], check=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_point, name, m, f, bench, out)
                   for name, (m, f) in grid.items()]
        rows = [row for fut in futures for row in fut.result()]
    summary = json.loads((bench / "summary.json").read_text())
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.tag}.json"
    previous = json.loads(path.read_text())["rows"] if path.is_file() else []
    names = {r["point"] for r in rows}
    rows = [r for r in previous if r["point"] not in names] + rows
    path.write_text(json.dumps({
        "what": "win rate vs the tuning task's initial policy, held-out prompts, gold judge",
        "task": summary["config"], "common_flags": COMMON, "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "command": "python benchmarks/bench_tuning.py --bench BENCH --out OUT "
                   "(BENCH from `editalign bench init --out BENCH --seed 1`)"}, indent=2) + "\n")
    lines = ["| setting | method | win rate | 95% CI | gold score | initial's | KL | length |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kl = "n/a" if r["kl"] is None else f"{r['kl']:.2f}"
        lines.append(f"| {r['point']} | {r['method']} | {r['win_rate']:.3f} | "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['score_policy']:.3f} | "
                     f"{r['score_reference']:.3f} | {kl} | {r['length_policy']:.1f} |")
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
