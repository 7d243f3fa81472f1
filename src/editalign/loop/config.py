"""The loop's configuration: loop.yaml resolved against the built-in defaults, checked
key by key against the options of the commands each stage runs."""

from __future__ import annotations

import argparse
import copy
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from editalign.bench.tuned import TUNED
from editalign.train.rl_stage import REWARD_TRAINERS, RL_TRAINERS

if TYPE_CHECKING:
    from editalign.commands.common import CommandTable

# Trainers that turn edit pairs into a policy with `--model --data --output_dir`; the RL
# methods (`ppo`, `grpo`) train a reward on the round's pairs, then the policy against it
# (editalign.train.rl_stage, the benchmark's RL stage too).
POLICY_METHODS = ("figa", "sft", "dpo", *RL_TRAINERS)
# train.reward with an RL method: the reward each round trains (token-rm, rm, or a DPO
# policy read as RTO's implicit token reward), and how the RL trainer reads it.
PPO_REWARDS = REWARD_TRAINERS
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
# FIGA's flags and rate come from the benchmark's tuned table (editalign.bench.tuned.TUNED,
# the first task): its flags, and the rate tuned for FIGA trained round after round
# (figa-online). At the one-round rate every round restarted a schedule tuned for one
# round: the third round drifted (KL 17) and lost to the second (docs/loop.md).
_FIGA_FLAGS = dict(zip(TUNED["facts"].args["figa"][::2], TUNED["facts"].args["figa"][1::2],
                       strict=True))
BENCH_DEFAULTS: dict[str, Any] = {
    "rounds": 3,
    "sample": {"num_samples": 2, "max_new_tokens": 96, "temperature": 1.0, "batch_size": 32},
    "revise": {"reviser": "bench"},
    # The benchmark's one-round budget (100 steps) in every round. A third of it per round
    # never beat the initial policy in a measured run; the full budget won in rounds 1-2 but
    # drifted (KL 17) and lost in round 3: benchmarks/results/loop_default.json, docs/loop.md.
    "train": {"method": "figa", "args": {
        "max_steps": 100, "per_device_train_batch_size": 16,
        "learning_rate": TUNED["facts"].learning_rates["figa-online"],
        **{flag.removeprefix("--"): yaml.safe_load(value) for flag, value in _FIGA_FLAGS.items()},
        "lr_scheduler_type": "linear"}},
    "eval": {"judge": "gold", "samples_per_prompt": 4, "max_new_tokens": 64,
             "batch_size": 72},
}


class ConfigError(ValueError):
    """A loop configuration that cannot run; the message names the key."""


# --------------------------------------------------------------------------- configuration


def stage_commands() -> CommandTable:
    """The commands the loop's stages run (bench init, sample, revise, label, train, eval),
    from the command layer below the loop. Imported when first needed: importing one loads
    the package of every command, whose ``loop`` command imports this package."""
    import editalign.commands.bench as bench
    import editalign.commands.evaluate as evaluate
    import editalign.commands.label as label
    import editalign.commands.revise as revise
    import editalign.commands.sample as sample
    import editalign.commands.train as train
    from editalign.commands.common import CommandTable

    return CommandTable([bench, evaluate, label, revise, sample, train])


def stage_parsers() -> dict[str, argparse.ArgumentParser]:
    return stage_commands().parsers()


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
    _check_sections(raw, source)
    if out is not None:
        raw["out"] = out
    cfg = _with_defaults(raw)
    _check_run(cfg, source)
    _check_revise(cfg["revise"], source)
    _check_train(cfg["train"], source)
    parsers = stage_parsers()
    bench_init_flags(cfg.get("bench_init"), parsers["bench"], source)
    for section in ("sample", "revise", "label", "eval"):
        try:
            command_flags(section, cfg[section], parsers[section])
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return cfg


def _check_sections(raw: dict[str, Any], source: str) -> None:
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
    for section in ("sample", "revise", "label", "train", "eval"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: {section}: expected a mapping, got "
                              f"{type(raw[section]).__name__}")


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """The loop's defaults under ``raw``; on the generated task, its files and defaults."""
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
    if on_bench:
        bench = Path(cfg.get("bench") or Path(cfg["out"]) / "bench")
        cfg["bench"] = str(bench)
        cfg.setdefault("policy", str(bench / "policy"))
        cfg.setdefault("prompts", str(bench / "prompts.train.jsonl"))
        cfg["eval"].setdefault("prompts", str(bench / "prompts.test.jsonl"))
        if cfg["revise"].get("reviser") == "bench":
            cfg["revise"].setdefault("bench", str(bench))
    return cfg


def _check_run(cfg: dict[str, Any], source: str) -> None:
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


def _check_revise(revise: dict[str, Any], source: str) -> None:
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


def _check_train(train: dict[str, Any], source: str) -> None:
    if train.get("method") not in POLICY_METHODS:
        raise ConfigError(f"{source}: train.method: {train.get('method')!r} is not one of "
                          f"{', '.join(POLICY_METHODS)} (the trainers that turn edit pairs into "
                          "a policy)")
    for key in train:
        if key not in OWN_KEYS["train"]:
            raise ConfigError(f"{source}: train.{key}: unknown key; allowed: "
                              f"{', '.join(sorted(OWN_KEYS['train']))} (trainer options go "
                              "under train.args)")
    if train["method"] in RL_TRAINERS:
        train.setdefault("reward", "token")
        if train["reward"] not in PPO_REWARDS:
            raise ConfigError(f"{source}: train.reward: {train['reward']!r} is not one of "
                              f"{', '.join(PPO_REWARDS)} (the reward {train['method']} trains "
                              "against: token-level, sequence-level, or a DPO policy's "
                              "implicit reward)")
    elif "reward" in train or "reward_args" in train:
        raise ConfigError(f"{source}: train.reward/reward_args: only with method: "
                          f"{' or '.join(RL_TRAINERS)}")
    train_flags(train.get("args"))
    train_flags(train.get("reward_args"))


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
