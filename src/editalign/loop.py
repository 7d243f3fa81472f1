"""``editalign loop``: sample → revise → label → train → evaluate, round after round.

Round ``k`` (1-based) samples the current policy (the initial one in round 1) on the
training prompts, has the samples minimally edited (an LLM behind an OpenAI-compatible
endpoint through ``editalign revise``, with its filters and request cache; or, for the
generated benchmark task, its programmatic reviser), labels the pairs that carry an edit
with the policy's tokenizer, trains the policy on them (FIGA by default, any supervised
trainer and its flags) and measures the new policy's win rate against the *initial* one
(``editalign eval winrate``, any judge it supports). Round ``k + 1`` starts from round
``k``'s policy.

Every stage except the programmatic reviser runs as a child process (``python -m
editalign.cli ...``) with its output in a log file beside its artefacts, so a crash stays
contained and its log stays readable. Layout of ``OUT``::

    loop_config.json          the resolved configuration (a rerun must match it)
    bench/                    the generated task, when the loop runs on it (built once)
    round{k}/sample.jsonl     the policy's samples (rows revise/annotate/label read)
    round{k}/revised.jsonl    kept edit pairs (+ revised.dropped.jsonl with reasons)
    round{k}/pairs.jsonl      the pairs with an edit: the training data
    round{k}/labels/          `editalign label` output
    round{k}/policy/          the trained policy (the next round's starting point)
    round{k}/winrate.json     win rate against the initial policy (+ eval_samples.jsonl)
    round{k}/{stage}.log      each child's output; round{k}/{stage}.done: its marker
    results.json, results.md, winrate.png, report.md

A stage whose ``.done`` marker exists is skipped, so rerunning the same command after a
kill resumes at the first unfinished stage; ``sample`` also resumes within its file and
``revise`` answers every request it already paid for from its cache.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from editalign.data.jsonl import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

# Trainers that turn edit pairs into a policy with `--model --data --output_dir`; `ppo`
# trains a reward model on the round's pairs, then the policy with PPO against it.
POLICY_METHODS = ("figa", "sft", "dpo", "ppo")
# train.reward with method ppo: the reward model each round trains, and how PPO reads it.
PPO_REWARDS = {"token": "token-rm", "sequence": "rm"}
REVISERS = ("api", "bench")
STAGES = ("sample", "revise", "label", "train", "eval")
TOP_KEYS = ("out", "rounds", "seed", "policy", "prompts", "bench", "bench_init", "sample",
            "revise", "label", "train", "eval")
# Options of each child command that the loop itself sets (a config may not).
OWNED = {
    "sample": {"config", "model", "prompts", "out", "seed", "no_progress"},
    "revise": {"config", "data", "out", "dropped", "no_progress"},
    "label": {"config", "data", "out", "model"},
    "eval": {"metric", "config", "policy", "reference", "out", "samples_out"},
    "bench_init": {"action", "config", "out", "preset"},
}
# The loop's own keys inside a stage's section (not options of the child command).
OWN_KEYS = {"revise": {"reviser", "bench"},
            "train": {"method", "args", "only_edited", "reward", "reward_args"},
            "eval": set(), "sample": set(), "label": set(), "bench_init": {"preset"}}

# Built-in defaults on the generated task: what `editalign loop` runs with no config.
# FIGA's flags are the ones tuned for the benchmark (editalign.bench.runner.TUNED_*).
BENCH_DEFAULTS: dict[str, Any] = {
    "rounds": 3,
    "sample": {"num_samples": 2, "max_new_tokens": 96, "temperature": 1.0, "batch_size": 32},
    "revise": {"reviser": "bench"},
    # The benchmark's one-round budget (100 steps) in every round. A third of it per round
    # never beat the initial policy in a measured run; the full budget won in rounds 1-2 but
    # drifted (KL 17) and lost in round 3: benchmarks/results/loop_default.json, docs/loop.md.
    "train": {"method": "figa", "args": {
        "max_steps": 100, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
        "gamma": 1, "beta": 0.25, "lr_scheduler_type": "linear"}},
    "eval": {"judge": "gold", "samples_per_prompt": 4, "max_new_tokens": 64,
             "batch_size": 72},
}


class ConfigError(ValueError):
    """A loop configuration that cannot run; the message names the key."""


# --------------------------------------------------------------------------- configuration


CommandSpec = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _commands() -> dict[str, CommandSpec]:
    """The commands a stage runs, as ``(add_args, run)``: the functions ``editalign``
    registers for them (cli.py), taken from their own modules so the loop sits below the CLI."""
    import functools

    from editalign.bench.command import add_bench_args, cmd_bench
    from editalign.eval.winrate import add_eval_args, cmd_eval
    from editalign.label import add_label_args, cmd_label
    from editalign.registry import make_judge
    from editalign.revise.command import add_revise_args, cmd_revise
    from editalign.sample import add_sample_args, cmd_sample

    return {"bench": (add_bench_args, cmd_bench), "label": (add_label_args, cmd_label),
            "eval": (add_eval_args, functools.partial(cmd_eval, make_judge=make_judge)),
            "revise": (add_revise_args, cmd_revise), "sample": (add_sample_args, cmd_sample)}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for name, (add_args, _) in _commands().items():
        parsers[name] = argparse.ArgumentParser(prog=f"editalign {name}")
        add_args(parsers[name])
    return parsers


def run_command(argv: Sequence[str]) -> int:
    """``editalign ARGV`` in this process, with the CLI's exit codes (2 on a data error)."""
    from editalign.data.pairs import DataError
    from editalign.train.common import run_trainer

    name, rest = argv[0], list(argv[1:])
    try:
        if name == "train":
            return int(run_trainer(rest[0], rest[1:]) or 0)
        add_args, run = _commands()[name]
        parser = argparse.ArgumentParser(prog=f"editalign {name}")
        add_args(parser)
        args = parser.parse_args(rest)
        args.command = name
        return int(run(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"editalign {name}: error: {err}", file=sys.stderr)
        return 2


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _check_value(where: str, action: argparse.Action, value: Any) -> None:
    """Type and choices of one option value, as argparse would check them."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return
    values = value if isinstance(action, argparse._AppendAction) and isinstance(value, list) \
        else [value]
    for v in values:
        if isinstance(v, dict | list):
            raise ConfigError(f"{where}: expected a single value, got {v!r}")
        if action.type is not None and v is not None:
            try:
                converted = action.type(v if isinstance(v, str) else str(v))
            except (TypeError, ValueError):
                name = getattr(action.type, "__name__", str(action.type))
                raise ConfigError(f"{where}: expected {name}, got {v!r}") from None
        else:
            converted = v
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")


def command_flags(section: str, values: Mapping[str, Any],
                  parser: argparse.ArgumentParser) -> list[str]:
    """``{"max_edit_ratio": 0.4, "retry_strict": True}`` -> ``--max-edit-ratio 0.4
    --retry-strict`` for the child command, checked against its parser."""
    actions = _actions(parser)
    flags: list[str] = []
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest in OWN_KEYS[section]:
            continue
        where = f"{section}.{key}"
        if dest not in actions or dest in OWNED.get(section, ()):
            allowed = sorted(set(actions) - OWNED.get(section, set()))
            raise ConfigError(f"{where}: unknown option; allowed: "
                              f"{', '.join(sorted([*allowed, *OWN_KEYS[section]]))}")
        action = actions[dest]
        _check_value(where, action, value)
        option = max(action.option_strings, key=len)
        if action.nargs == 0:
            if value != action.default:
                flags.append(option)
        elif value is None:
            continue
        elif isinstance(action, argparse._AppendAction) and isinstance(value, list):
            for v in value:
                flags += [option, str(v)]
        else:
            flags += [option, str(value)]
    return flags


def train_flags(args: Any) -> list[str]:
    """``train.args`` as trainer flags: a mapping (``max_steps: 50`` -> ``--max_steps 50``)
    or a list/string of flags as on the command line."""
    if args is None:
        return []
    if isinstance(args, str):
        return shlex.split(args)
    if isinstance(args, list):
        return [str(a) for a in args]
    if isinstance(args, dict):
        flags: list[str] = []
        for key, value in args.items():
            flags.append(f"--{key}")
            if isinstance(value, list):
                flags += [str(v) for v in value]
            elif value is not None:
                flags.append(str(value))
        return flags
    raise ConfigError(f"train.args: expected a mapping of trainer options, a list of flags or "
                      f"a string, got {type(args).__name__}")


def bench_init_flags(values: Any, parser: argparse.ArgumentParser, source: str = "config"
                     ) -> list[str]:
    """``bench_init: {preset: smoke, sft_steps: 50}`` -> ``--smoke --sft-steps 50``."""
    if values is None:
        return []
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: bench_init: expected a mapping of `editalign bench "
                          "init` options")
    preset = values.get("preset")
    if preset is not None and preset not in ("full", "quick", "smoke"):
        raise ConfigError(f"{source}: bench_init.preset: {preset!r} is not one of full, quick, "
                          "smoke")
    try:
        flags = command_flags("bench_init", values, parser)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return ([f"--{preset}"] if preset else []) + flags


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(raw: Mapping[str, Any] | None, *, source: str = "config",
                   out: str | None = None) -> dict[str, Any]:
    """Defaults filled in and every key checked; raises :class:`ConfigError` naming the key.

    Without ``policy`` (or with ``bench``), the loop runs on the generated task: ``bench``
    (default ``OUT/bench``, built by ``editalign bench init`` when missing) provides the
    initial policy, the training and test prompts, the programmatic reviser and the gold
    judge, and :data:`BENCH_DEFAULTS` apply.
    """
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of loop settings")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
    for section in ("sample", "revise", "label", "train", "eval"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: {section}: expected a mapping, got "
                              f"{type(raw[section]).__name__}")
    if out is not None:
        raw["out"] = out
    on_bench = raw.get("policy") is None or raw.get("bench") is not None
    cfg: dict[str, Any] = {"out": "loop-output", "rounds": 3, "seed": 0, "sample": {},
                           "revise": {"reviser": "api"}, "label": {},
                           "train": {"method": "figa"}, "eval": {"judge": "gold"}}
    if on_bench:
        defaults = copy.deepcopy(BENCH_DEFAULTS)
        if (raw.get("train") or {}).get("method", "figa") != defaults["train"]["method"]:
            del defaults["train"]["args"]  # FIGA's tuned flags mean nothing to another method
        cfg = _merge(cfg, defaults)
    cfg = _merge(cfg, {k: v for k, v in raw.items() if v is not None})
    out_dir = Path(cfg["out"])
    if on_bench:
        bench = Path(cfg.get("bench") or out_dir / "bench")
        cfg["bench"] = str(bench)
        cfg.setdefault("policy", str(bench / "policy"))
        cfg.setdefault("prompts", str(bench / "prompts.train.jsonl"))
        cfg["eval"].setdefault("prompts", str(bench / "prompts.test.jsonl"))
        if cfg["revise"].get("reviser") == "bench":
            cfg["revise"].setdefault("bench", str(bench))
    for key in ("rounds", "seed"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
            raise ConfigError(f"{source}: {key}: expected an integer, got {cfg[key]!r}")
    if cfg["rounds"] < 1:
        raise ConfigError(f"{source}: rounds: must be >= 1, got {cfg['rounds']}")
    for key in ("policy", "prompts"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise ConfigError(f"{source}: {key}: required (a model name or path / a prompts "
                              "file), unless the loop runs on the generated task (no policy)")
    cfg["eval"].setdefault("prompts", cfg["prompts"])
    revise = cfg["revise"]
    if revise.get("reviser") not in REVISERS:
        raise ConfigError(f"{source}: revise.reviser: {revise.get('reviser')!r} is not one of "
                          f"{', '.join(REVISERS)}")
    if revise["reviser"] == "api":
        for key in ("api_base", "model"):
            if not revise.get(key):
                raise ConfigError(f"{source}: revise.{key}: required with reviser: api (the "
                                  "OpenAI-compatible endpoint and the model it serves)")
    elif not revise.get("bench"):
        raise ConfigError(f"{source}: revise.bench: required with reviser: bench (a directory "
                          "written by `editalign bench init`)")
    train = cfg["train"]
    if train.get("method") not in POLICY_METHODS:
        raise ConfigError(f"{source}: train.method: {train.get('method')!r} is not one of "
                          f"{', '.join(POLICY_METHODS)} (the trainers that turn edit pairs into "
                          "a policy)")
    for key in train:
        if key not in OWN_KEYS["train"]:
            raise ConfigError(f"{source}: train.{key}: unknown key; allowed: "
                              f"{', '.join(sorted(OWN_KEYS['train']))} (trainer options go "
                              "under train.args)")
    if train["method"] == "ppo":
        train.setdefault("reward", "token")
        if train["reward"] not in PPO_REWARDS:
            raise ConfigError(f"{source}: train.reward: {train['reward']!r} is not one of "
                              f"{', '.join(PPO_REWARDS)} (the reward model PPO trains against: "
                              "token-level or sequence-level)")
    elif "reward" in train or "reward_args" in train:
        raise ConfigError(f"{source}: train.reward/reward_args: only with method: ppo")
    train_flags(train.get("args"))
    train_flags(train.get("reward_args"))
    parsers = _parsers()
    bench_init_flags(cfg.get("bench_init"), parsers["bench"], source)
    for section in ("sample", "revise", "label", "eval"):
        try:
            command_flags(section, cfg[section], parsers[section])
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | None, out: str | None = None, rounds: int | None = None
                ) -> dict[str, Any]:
    """The loop.yaml at ``path`` (None: built-in defaults) resolved; ``out``/``rounds``
    override it."""
    if path is None:
        return resolve_config({} if rounds is None else {"rounds": rounds},
                              source="built-in defaults", out=out)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of loop settings, got "
                          f"{type(raw).__name__}")
    if rounds is not None:
        raw = {**(raw or {}), "rounds": rounds}
    return resolve_config(raw, source=path, out=out)


# --------------------------------------------------------------------------- running stages


class StageFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the loop dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Runner:
    """Runs an ``editalign`` command with its output appended to a log file: as a child
    process (``python -m editalign.cli ...``) for the stages in ``child_stages``, else in
    this process with stdout, stderr and logging captured (no torch/transformers start-up
    per stage; ``child_stages=()`` runs everything in-process, as the fast tests do)."""

    def __init__(self, child_stages: Sequence[str] = ("train", "bench")) -> None:
        self.child_stages = set(child_stages)

    def __call__(self, argv: Sequence[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ editalign {shlex.join(argv)}\n")
            handle.flush()
            if argv[0] not in self.child_stages:
                return self._in_process(argv, handle)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "editalign.cli", *argv],
                                    stdout=handle, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent if sys.platform == "linux"
                                    else None)
            try:
                return proc.wait()
            finally:
                if proc.poll() is None:  # the loop was interrupted: do not leave it running
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()

    @staticmethod
    def _in_process(argv: Sequence[str], handle: io.TextIOBase) -> int:
        root = logging.getLogger()
        # The stage's log records go to its file only; the terminal keeps one line per stage.
        saved = root.handlers[:]
        stream = logging.StreamHandler(handle)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.handlers = [stream]
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                return run_command(argv)
        except SystemExit as err:
            return err.code if isinstance(err.code, int) else 1
        finally:
            root.handlers = saved


class Loop:
    def __init__(self, config: dict[str, Any], *, runner: Callable[[Sequence[str], Path], int]
                 | None = None, echo: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.out = Path(config["out"])
        self.run = runner or Runner()
        self.echo = echo
        self.parsers = _parsers()

    # ---- bookkeeping

    def _check_config(self) -> None:
        """A rerun into the same OUT must use the same settings (more rounds are fine)."""
        path = self.out / "loop_config.json"
        if path.is_file():
            before = json.loads(path.read_text())
            for key in sorted(set(before) | set(self.cfg)):
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
                              f"{_tail(log)}")
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
                              f"{_tail(log)}")

    def sample(self, k: int) -> dict[str, Any]:
        out = self.out / f"round{k}" / "sample.jsonl"
        self._child(k, "sample", [
            "sample", "--model", self.policy_of(k), "--prompts", self.cfg["prompts"],
            "--out", str(out), "--seed", str(self.cfg["seed"] + k), "--no-progress",
            *command_flags("sample", self.cfg["sample"], self.parsers["sample"])])
        rows = _read_jsonl(out)
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
        kept = _read_jsonl(out)
        dropped = _read_jsonl(round_dir / "revised.dropped.jsonl")
        return {"kept": len(kept), "dropped": len(dropped),
                "with_edit": sum(r["original"] != r["revised"] for r in kept),
                "dropped_reasons": dict(Counter(r["reason"].split(" (")[0] for r in dropped))}

    def label(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        kept = _read_jsonl(round_dir / "revised.jsonl")
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

    def train(self, k: int) -> dict[str, Any]:
        round_dir = self.out / f"round{k}"
        train = self.cfg["train"]
        quiet = ["--seed", str(self.cfg["seed"] + k), "--report_to", "none",
                 "--save_strategy", "no", "--disable_tqdm", "True"]
        if train["method"] == "ppo":
            return self._train_ppo(k, quiet)
        argv = ["train", train["method"], "--model", self.policy_of(k),
                "--data", str(round_dir / "labels"), "--output_dir", str(round_dir / "policy"),
                *quiet, *train_flags(train.get("args"))]  # last, so the user's flags win
        self._child(k, "train", argv)
        metrics = round_dir / "policy" / "train_results.json"
        loss = json.loads(metrics.read_text()).get("train_loss") if metrics.is_file() else None
        return {"method": train["method"], "train_loss": loss}

    def _train_ppo(self, k: int, quiet: list[str]) -> dict[str, Any]:
        """A reward model on this round's pairs (initialised from the current policy), then
        PPO from the current policy against it on the prompts this round sampled."""
        round_dir = self.out / f"round{k}"
        train = self.cfg["train"]
        rm_method = PPO_REWARDS[train["reward"]]
        rm_dir = round_dir / "reward_model"
        if not (rm_dir / "reward_config.json").is_file():  # kept when PPO is what got killed
            self._child(k, "train_reward_model", [
                "train", rm_method, "--model", self.policy_of(k),
                "--data", str(round_dir / "labels"), "--output_dir", str(rm_dir), *quiet,
                *train_flags(train.get("reward_args"))])
        # PPO reads its prompts from a pairs file (chat-message prompts included): one row
        # per prompt this round sampled.
        prompts = round_dir / "ppo_prompts.jsonl"
        seen: dict[Any, dict[str, Any]] = {}
        for row in _read_jsonl(round_dir / "sample.jsonl"):
            key = json.dumps(row["prompt"], sort_keys=True)
            seen.setdefault(key, {"id": f"prompt-{len(seen)}", "prompt": row["prompt"],
                                  "original": "-", "revised": "-"})
        write_jsonl(prompts, seen.values())
        self._child(k, "train", [
            "train", "ppo", "--model", self.policy_of(k), "--prompts", str(prompts),
            "--reward_model", str(rm_dir), "--reward", train["reward"],
            "--output_dir", str(round_dir / "policy"), *quiet, *train_flags(train.get("args"))])
        reward_eval = rm_dir / "eval_results.json"
        return {"method": f"ppo ({train['reward']}-level reward model)", "prompts": len(seen),
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
            from editalign.eval.winrate import read_prompt_rows

            rows = read_prompt_rows(self.cfg["eval"]["prompts"], limit=1)
            if rows and not isinstance(rows[0].get("bench"), dict):
                raise ConfigError(
                    f"eval.judge: gold judges only the generated task's prompts (rows with a "
                    f"'bench' object), and {self.cfg['eval']['prompts']} has none; use "
                    "rm:DIR (a reward model) or api:URL (an LLM judge)")

    def run_all(self) -> list[dict[str, Any]]:
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
            write_results(self.out, self.cfg, rounds)  # after every round: partial results
        return rounds


# --------------------------------------------------------------------------- the bench reviser


def bench_revise(samples: Path, prompts: Path, out: Path) -> dict[str, Any]:
    """Revise every sample with the generated task's programmatic reviser (no filter drops
    anything: it fixes exactly what the gold judge counts as wrong)."""
    from editalign.bench.reviser import revise
    from editalign.bench.task import judge_summary

    rows = _read_jsonl(prompts)
    pairs, originals, revised, infos = [], [], [], []
    for sample in _read_jsonl(samples):
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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def paired_difference(a: Path, b: Path) -> dict[str, float] | None:
    """Win rate in ``a`` minus in ``b`` (two rounds' eval_samples.jsonl, judged against the
    same reference samples), with a 95% bootstrap interval over prompts."""
    from editalign.eval.winrate import bootstrap_interval

    rows_a, rows_b = _read_jsonl(a), _read_jsonl(b)
    if not rows_a or len(rows_a) != len(rows_b):
        return None
    per_prompt: dict[str, list[float]] = {}
    for ra, rb in zip(rows_a, rows_b, strict=True):
        per_prompt.setdefault(str(ra["id"]), []).append(ra["outcome"] - rb["outcome"])
    means = [sum(v) / len(v) for v in per_prompt.values()]
    low, high = bootstrap_interval(means, seed=0)
    return {"difference": sum(means) / len(means), "ci_low": low, "ci_high": high}


def write_results(out: Path, cfg: Mapping[str, Any], rounds: Sequence[dict[str, Any]]
                  ) -> dict[str, Any]:
    """``results.json``, ``results.md``, ``winrate.png`` and ``report.md``."""
    table = []
    for r in rounds:
        result = json.loads((out / f"round{r['round']}" / "winrate.json").read_text())
        row = {"round": r["round"], "win_rate": result["win_rate"], "ci_low": result["ci_low"],
               "ci_high": result["ci_high"], "kl": result["kl"], "n": result["n"],
               "length_policy": result["length_policy"], "judge": result["judge"],
               "samples": r["sample"]["rows"], "pairs_kept": r["revise"]["kept"],
               "pairs_with_edit": r["revise"]["with_edit"],
               "train_loss": r["train"].get("train_loss"),
               "seconds": sum(r[s]["seconds"] for s in STAGES)}
        if "sample_gold_score" in r["revise"]:
            row["sample_gold_score"] = r["revise"]["sample_gold_score"]
        if r["round"] > 1:
            row["vs_previous_round"] = paired_difference(
                out / f"round{r['round']}" / "eval_samples.jsonl",
                out / f"round{r['round'] - 1}" / "eval_samples.jsonl")
        table.append(row)
    data = {"config": dict(cfg), "rounds": table, "stages": list(rounds)}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = results_markdown(table)
    (out / "results.md").write_text(markdown + "\n")
    plot_win_rates(table, out / "winrate.png")
    (out / "report.md").write_text(report_markdown(cfg, table, markdown))
    return data


def results_markdown(table: Sequence[dict[str, Any]]) -> str:
    gold = any("sample_gold_score" in r for r in table)
    head = ("| round | win rate vs initial | 95% CI | vs previous round (95% CI) | KL | length "
            "| samples | pairs kept / with edit |" + (" gold score of its samples |" if gold
                                                      else "") + " train loss | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        prev = r.get("vs_previous_round")
        prev_text = "" if not prev else (f"{prev['difference']:+.3f} [{prev['ci_low']:+.3f}, "
                                         f"{prev['ci_high']:+.3f}]")
        kl = "n/a" if r["kl"] is None else f"{r['kl']:.2f}"
        loss = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        lines.append(
            f"| {r['round']} | {r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
            f"{prev_text} | {kl} | {r['length_policy']:.1f} | {r['samples']} | "
            f"{r['pairs_kept']} / {r['pairs_with_edit']} |"
            + (f" {r.get('sample_gold_score', float('nan')):.3f} |" if gold else "")
            + f" {loss} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot_win_rates(table: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in table]
    rates = [r["win_rate"] for r in table]
    errors = [[r["win_rate"] - r["ci_low"] for r in table],
              [r["ci_high"] - r["win_rate"] for r in table]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(rounds, rates, yerr=errors, marker="o", capsize=4)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="initial policy (tie)")
    ax.set_xlabel("round")
    ax.set_ylabel("win rate vs initial policy")
    ax.set_xticks(rounds)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_markdown(cfg: Mapping[str, Any], table: Sequence[dict[str, Any]],
                    markdown: str) -> str:
    revise = cfg["revise"]
    reviser = ("the generated task's programmatic reviser" if revise["reviser"] == "bench"
               else f"{revise['model']} at {revise['api_base']}")
    lines = [
        "# editalign loop report", "",
        f"Initial policy `{cfg['policy']}`, prompts `{cfg['prompts']}`; each round: sample "
        f"the current policy, revise with {reviser}, label, train "
        f"`{cfg['train']['method']}`, then judge against the initial policy "
        f"(`{cfg['eval']['judge']}` judge, prompts `{cfg['eval']['prompts']}`).", "",
        f"Rounds finished: {len(table)} of {cfg['rounds']}.", "",
        "![win rate per round](winrate.png)", "",
        markdown, "",
        "Win rates come with a 95% bootstrap interval over prompts; \"vs previous round\" is "
        "the paired difference (the same reference samples every round). KL is the policy's "
        "KL to the initial policy on its own samples.", "",
        "Per round: `roundK/sample.jsonl` (samples), `roundK/revised.jsonl` and "
        "`revised.dropped.jsonl` (edits and what was dropped, why), `roundK/labels/preview.html`"
        " (token labels), `roundK/policy/` (the trained policy), `roundK/eval_samples.jsonl`, "
        "and one log per stage.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def add_loop_args(p: argparse.ArgumentParser) -> None:
    # dest loop_config: the generic --config of other commands (YAML keys = options) must
    # not apply; a loop.yaml has its own schema.
    p.add_argument("--config", dest="loop_config", help="loop.yaml (see docs/loop.md); without it the loop runs "
                   "on built-in defaults: the generated task with tiny-bench, the programmatic "
                   "reviser and the gold judge")
    p.add_argument("--out", help="output directory (overrides the config's out; default "
                   "loop-output)")
    p.add_argument("--rounds", type=int, help="number of rounds (overrides the config)")


def cmd_loop(args: argparse.Namespace) -> int:
    config = load_config(args.loop_config, out=args.out, rounds=args.rounds)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    loop = Loop(config)
    print(f"editalign loop: {config['rounds']} rounds into {loop.out} (initial policy "
          f"{config['policy']}, train {config['train']['method']}, judge "
          f"{config['eval']['judge']})", flush=True)
    try:
        loop.run_all()
    except StageFailed as err:
        print(f"editalign loop: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\neditalign loop: interrupted; rerun the same command to resume from the "
              "unfinished stage", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((loop.out / "results.md").read_text())
    print(f"report: {loop.out / 'report.md'} (plot: {loop.out / 'winrate.png'})")
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
