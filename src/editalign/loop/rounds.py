"""The rounds: sample -> revise -> label -> train -> evaluate, each stage resumable by its
marker."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from editalign.bench.reviser import revise
from editalign.bench.runner import bench_task
from editalign.bench.task import judge_summary
from editalign.bench.tuned import TUNED
from editalign.data.jsonl import write_jsonl
from editalign.eval.winrate import read_prompt_rows
from editalign.loop.config import (
    STAGES,
    ConfigError,
    bench_init_flags,
    command_flags,
    stage_parsers,
    train_flags,
)
from editalign.loop.results import lost_to_previous, read_rows, write_results
from editalign.loop.runner import Runner, StageFailed, log_tail
from editalign.outputs import claim_dir
from editalign.train.rl_stage import DPO_DEFAULT_BETA, RL_TRAINERS, RLMethod, run_rl_stage


class Loop:
    def __init__(self, config: dict[str, Any], *, runner: Callable[[Sequence[str], Path], int]
                 | None = None, echo: Callable[[str], None] = print,
                 keep_going: bool = False) -> None:
        self.cfg = config
        # Without it the loop stops after a round that loses to the previous one (a 95%
        # interval of the paired difference below 0): more rounds would start from it.
        self.keep_going = keep_going
        self.stopped_at: int | None = None
        self.out = Path(config["out"])
        self.run = runner or Runner()
        self.echo = echo
        self.parsers = stage_parsers()

    # ---- bookkeeping

    def _check_config(self) -> None:
        """A rerun into the same OUT must use the same settings (more rounds are fine)."""
        path = self.out / "loop_config.json"
        if path.is_file():
            before = json.loads(path.read_text())
            for key in sorted(set(before) | set(self.cfg)):
                if key in STAGES and not any(self.out.glob(f"round*/{key}.done")):
                    continue  # a stage that never ran: its corrected settings apply
                if key != "rounds" and before.get(key) != self.cfg.get(key):
                    raise ConfigError(
                        f"{self.out} was started with another {key!r} ({before.get(key)!r}, "
                        f"now {self.cfg.get(key)!r}); use a new out directory, or restore the "
                        "settings to resume")
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.cfg, indent=2) + "\n")

    def _stage(self, k: int, stage: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        marker = round_dir / f"{stage}.done"
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.echo(f"round {k} {stage}: done earlier, skipped")
            return info
        round_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        info = work()
        info["seconds"] = round(time.perf_counter() - started, 2)
        marker.write_text(json.dumps(info, indent=2) + "\n")
        details = ", ".join(f"{key} {value}" for key, value in info.items()
                            if key != "seconds" and not isinstance(value, dict | list))
        self.echo(f"round {k} {stage}: {details} ({info['seconds']:.1f} s)")
        return info

    def _child(self, k: int, stage: str, argv: list[str], *, allowed: tuple[int, ...] = (0,)
               ) -> int:
        log = self.out / f"round{k}" / f"{stage}.log"
        code = self.run(argv, log)
        if code not in allowed:
            raise StageFailed(f"round {k} {stage} failed (exit {code}); last lines of {log}:\n"
                              f"{log_tail(log)}")
        return code

    # ---- the stages

    def policy_of(self, k: int) -> str:
        """The policy round ``k`` starts from."""
        return self.cfg["policy"] if k == 1 else str(self.out / f"round{k - 1}" / "policy")

    def ensure_bench(self) -> None:
        bench = self.cfg.get("bench")
        if not bench or (Path(bench) / "summary.json").is_file():
            return
        self.echo(f"bench init: building the generated task and its initial policy in {bench}")
        log = self.out / "bench_init.log"
        flags = bench_init_flags(self.cfg.get("bench_init"), self.parsers["bench"])
        code = self.run(["bench", "init", "--out", bench, *flags], log)
        if code:
            raise StageFailed(f"bench init failed (exit {code}); last lines of {log}:\n"
                              f"{log_tail(log)}")

    def sample(self, k: int) -> dict[str, Any]:
        out = self.out / f"round{k}" / "sample.jsonl"
        self._child(k, "sample", [
            "sample", "--model", self.policy_of(k), "--prompts", self.cfg["prompts"],
            "--out", str(out), "--seed", str(self.cfg["seed"] + k), "--no-progress",
            *command_flags("sample", self.cfg["sample"], self.parsers["sample"])])
        rows = read_rows(out)
        stops = sum(r["meta"]["sample"]["finish_reason"] == "stop" for r in rows)
        return {"rows": len(rows), "stopped_at_eos": stops}

    def revise(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        samples, out = round_dir / "sample.jsonl", round_dir / "revised.jsonl"
        revise = self.cfg["revise"]
        if revise["reviser"] == "bench":
            # the samples' prompt_index points into the sampled prompts file, whose rows
            # carry the task's `bench` objects
            return bench_revise(samples, Path(self.cfg["prompts"]), out)
        flags = command_flags("revise", revise, self.parsers["revise"])
        if "--cache" not in flags:  # one cache per loop: a rerun pays for nothing twice
            flags += ["--cache", str(self.out / "revise-cache.sqlite")]
        code = self._child(k, "revise", ["revise", "--data", str(samples), "--out", str(out),
                                         "--no-progress", *flags], allowed=(0, 1))
        if code == 1:
            raise StageFailed(f"round {k} revise: some requests failed after every retry (see "
                              f"{round_dir / 'revised.dropped.jsonl'}); rerun the same loop "
                              "command to retry only those (answers so far are cached)")
        kept = read_rows(out)
        dropped = read_rows(round_dir / "revised.dropped.jsonl")
        return {"kept": len(kept), "dropped": len(dropped),
                "with_edit": sum(r["original"] != r["revised"] for r in kept),
                "dropped_reasons": dict(Counter(r["reason"].split(" (")[0] for r in dropped))}

    def label(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        kept = read_rows(round_dir / "revised.jsonl")
        only_edited = self.cfg["train"].get("only_edited", True)
        pairs = [r for r in kept if r["original"] != r["revised"]] if only_edited else kept
        if not pairs:
            raise StageFailed(f"round {k}: no pair to train on: the reviser kept "
                              f"{len(kept)} rows and changed none of them (see "
                              f"{round_dir / 'revised.jsonl'})")
        write_jsonl(round_dir / "pairs.jsonl", pairs)
        self._child(k, "label", [
            "label", "--data", str(round_dir / "pairs.jsonl"), "--model", self.policy_of(k),
            "--out", str(round_dir / "labels"),
            *command_flags("label", self.cfg["label"], self.parsers["label"])])
        stats = json.loads((round_dir / "labels" / "stats.json").read_text())
        return {"pairs": len(pairs), "labelled": stats["labels"]["kept"],
                "truncated": stats["labels"]["truncated_pairs"]}

    def _quiet(self, k: int) -> list[str]:
        return ["--seed", str(self.cfg["seed"] + k), "--report_to", "none",
                "--save_strategy", "no", "--disable_tqdm", "True"]

    def _train_argv(self, k: int) -> list[str]:
        round_dir = self.out / f"round{k}"
        train = self.cfg["train"]
        return ["train", train["method"], "--model", self.policy_of(k),
                "--data", str(round_dir / "labels"), "--output_dir", str(round_dir / "policy"),
                *self._quiet(k), *train_flags(train.get("args"))]  # last: the user's flags win

    def _rl_method(self) -> RLMethod:
        """This loop's RL method (train.method ppo or grpo) with its reward source."""
        train = self.cfg["train"]
        reward_args = train.get("reward_args") or {}
        # On the generated task the RL rate is the benchmark's tuned one for its task (the
        # RL arms' table); elsewhere the trainer's own default. train.args still win.
        rate = None
        if self.cfg.get("bench"):
            rate = TUNED[bench_task(Path(self.cfg["bench"]))].ppo_learning_rate
        return RLMethod(train["method"], train["reward"], learning_rate=rate,
                        reward_args=tuple(train_flags(reward_args)),
                        dpo_beta=float(reward_args.get("beta", DPO_DEFAULT_BETA)
                                       if isinstance(reward_args, dict) else DPO_DEFAULT_BETA))

    def _rl_argvs(self, k: int) -> tuple[list[str], list[str]]:
        """The reward's and the RL trainer's ``editalign train`` argv in round ``k``."""
        round_dir = self.out / f"round{k}"
        method = self._rl_method()
        rm_dir = round_dir / "reward_model"
        quiet = self._quiet(k)
        return (["train", method.reward_trainer, *method.reward_argv(
                    policy=self.policy_of(k), pairs=round_dir / "labels", output_dir=rm_dir,
                    flags=quiet)],
                ["train", method.trainer, *method.rl_argv(
                    policy=self.policy_of(k), prompts=round_dir / "rl_prompts.jsonl",
                    reward_model=rm_dir, output_dir=round_dir / "policy",
                    flags=[*quiet, *train_flags(self.cfg["train"].get("args"))])])

    def check_train_options(self) -> None:
        """``train.args`` (and ``reward_args``) through the trainer's own parser and checks,
        before any stage runs: a typo must not surface after the paid-for revise stage."""
        from editalign.train.cli import check_train_argv

        rl = self.cfg["train"]["method"] in RL_TRAINERS
        argvs = self._rl_argvs(1) if rl else [self._train_argv(1)]
        for i, argv in enumerate(argvs):
            key = "train.reward_args" if rl and i == 0 else "train.args"
            try:
                check_train_argv(argv[1], argv[2:])
            except ValueError as err:
                raise ConfigError(f"{key}: editalign train {argv[1]} refuses them: {err}"
                                  ) from None

    def train(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        train = self.cfg["train"]
        if train["method"] in RL_TRAINERS:
            return self._train_rl(k)
        self._child(k, "train", self._train_argv(k))
        metrics = round_dir / "policy" / "train_results.json"
        loss = json.loads(metrics.read_text()).get("train_loss") if metrics.is_file() else None
        return {"method": train["method"], "train_loss": loss}

    def _train_rl(self, k: int) -> dict[str, Any]:
        """The one RL stage (:func:`editalign.train.rl_stage.run_rl_stage`): a reward on this
        round's pairs (initialised from the current policy), then PPO or GRPO from the
        current policy against it on the prompts this round sampled."""
        round_dir = self.out / f"round{k}"
        train = self.cfg["train"]
        method = self._rl_method()
        rm_dir = round_dir / "reward_model"
        # The prompts this round sampled, once each, as prompts (text or chat messages).
        prompts = round_dir / "rl_prompts.jsonl"
        seen: dict[Any, dict[str, Any]] = {}
        for row in read_rows(round_dir / "sample.jsonl"):
            key = json.dumps(row["prompt"], sort_keys=True)
            seen.setdefault(key, {"id": f"prompt-{len(seen)}", "prompt": row["prompt"]})
        write_jsonl(prompts, seen.values())
        steps = {"reward_model": "train_reward_model", "rl": "train"}

        def execute(step: str, trainer: str, argv: list[str]) -> float:
            return float(self._child(k, steps[step], ["train", trainer, *argv]))

        quiet = self._quiet(k)
        # The user's flags last, so they win (train.args over the loop's own).
        run_rl_stage(method, policy=self.policy_of(k), prompts=prompts,
                     output_dir=round_dir / "policy", reward_dir=rm_dir,
                     pairs=round_dir / "labels", reward_flags=quiet,
                     rl_flags=[*quiet, *train_flags(train.get("args"))], execute=execute)
        reward_eval = rm_dir / "eval_results.json"
        return {"method": f"{train['method']} ({train['reward']} reward)", "prompts": len(seen),
                "reward_model": str(rm_dir),
                "reward_model_eval": json.loads(reward_eval.read_text())
                if reward_eval.is_file() else None}

    def evaluate(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        ev = self.cfg["eval"]
        # The same seed every round: each round is judged against the same reference samples.
        flags = command_flags("eval", {"seed": self.cfg["seed"], **ev}, self.parsers["eval"])
        self._child(k, "eval", ["eval", "winrate", "--policy", str(round_dir / "policy"),
                                "--reference", self.cfg["policy"], "--out",
                                str(round_dir / "winrate.json"), "--samples-out",
                                str(round_dir / "eval_samples.jsonl"), *flags])
        result = json.loads((round_dir / "winrate.json").read_text())
        return {"win_rate": round(result["win_rate"], 4),
                "ci": [round(result["ci_low"], 4), round(result["ci_high"], 4)]}

    # ---- the whole loop

    def check_inputs(self) -> None:
        """Before any work: the prompts files exist, and a gold judge has the task's rows."""
        for key, path in (("prompts", self.cfg["prompts"]),
                          ("eval.prompts", self.cfg["eval"]["prompts"])):
            if not Path(path).exists():
                raise ConfigError(f"{key}: {path} does not exist")
        if self.cfg["eval"].get("judge", "gold") == "gold":
            rows = read_prompt_rows(self.cfg["eval"]["prompts"], limit=1)
            if rows and not isinstance(rows[0].get("bench"), dict):
                raise ConfigError(
                    f"eval.judge: gold judges only the generated task's prompts (rows with a "
                    f"'bench' object), and {self.cfg['eval']['prompts']} has none; use "
                    "rm:DIR (a reward model) or api:URL (an LLM judge)")

    def run_all(self) -> list[dict[str, Any]]:
        # Before any work: OUT is new, empty or an earlier loop's, and no other loop runs in it.
        self.check_train_options()
        claim_dir(self.out, flag="--out", command="loop", legacy=(("loop_config.json",),))
        self._check_config()
        self.ensure_bench()
        self.check_inputs()
        rounds = []
        for k in range(1, self.cfg["rounds"] + 1):
            entry: dict[str, Any] = {"round": k, "start_policy": self.policy_of(k)}
            for stage, work in (("sample", self.sample), ("revise", self.revise),
                                ("label", self.label), ("train", self.train),
                                ("eval", self.evaluate)):
                entry[stage] = self._stage(k, stage, lambda w=work, k=k: w(k))
            rounds.append(entry)
            data = write_results(self.out, self.cfg, rounds)  # after every round: partial results
            last = data["rounds"][-1]
            if lost_to_previous(last) and k < self.cfg["rounds"] and not self.keep_going:
                prev = last["vs_previous_round"]
                self.stopped_at = k
                self.echo(f"round {k} lost to round {k - 1}: {prev['difference']:+.3f} "
                          f"[{prev['ci_low']:+.3f}, {prev['ci_high']:+.3f}]; stopping (best "
                          f"round {data['best_round']}: {data['best_policy']}; --keep-going "
                          "runs the remaining rounds)")
                break
        return rounds


# --------------------------------------------------------------------------- the bench reviser


def bench_revise(samples: Path, prompts: Path, out: Path) -> dict[str, Any]:
    """Revise every sample with the generated task's programmatic reviser (no filter drops
    anything: it fixes exactly what the gold judge counts as wrong)."""
    rows = read_rows(prompts)
    pairs, originals, revised, infos = [], [], [], []
    for sample in read_rows(samples):
        index = sample["meta"]["sample"]["prompt_index"]
        if index >= len(rows) or rows[index]["prompt"] != sample["prompt"]:
            raise ValueError(f"{samples}: row {sample['id']!r} does not match prompt "
                             f"{index} of {prompts}")
        info = rows[index].get("bench")
        if not isinstance(info, dict):
            raise ValueError(f"{prompts}: row {index} has no 'bench' object: reviser: bench "
                             "needs the generated task's prompts")
        revision = revise(sample["original"], info)
        meta = {**sample["meta"], "bench": info,
                "revise": {"reviser": "bench",
                           "edits": dict(Counter(e.kind for e in revision.edits))}}
        pairs.append({"id": sample["id"], "prompt": sample["prompt"],
                      "original": sample["original"], "revised": revision.text, "meta": meta})
        originals.append(sample["original"])
        revised.append(revision.text)
        infos.append(info)
    write_jsonl(out, pairs)
    write_jsonl(out.with_name(out.name.removesuffix(".jsonl") + ".dropped.jsonl"), [])
    before = judge_summary(originals, infos)
    return {"kept": len(pairs), "dropped": 0,
            "with_edit": sum(p["original"] != p["revised"] for p in pairs),
            # the gold judge on this round's training samples: how the policy improves on
            # the prompts it trains on, round by round
            "sample_gold_score": round(before["score"], 4),
            "sample_wrong_per_response": round(before["wrong_per_response"], 4),
            "sample_unwanted_per_response": round(before["unwanted_per_response"], 4)}


# --------------------------------------------------------------------------- results


