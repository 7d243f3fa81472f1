"""The one RL stage: train a reward on the pairs unless one is given, then RL against it.

``editalign bench run`` (the ppo-*/grpo-* arms) and ``editalign loop`` (``train.method: ppo``
or ``grpo``) both call :func:`run_rl_stage`; each passes how it runs an ``editalign train``
command (the benchmark in-process with its stage log, the loop as a child with its round
log) and the flags it shares across its methods (budget, seed, logging).

A method is an :class:`RLMethod`: its trainer (``ppo``, ``grpo``), its reward source
(``token``: a token RM trained with ``train token-rm``; ``sequence``: a sequence RM from
``train rm``; ``dpo``: a DPO policy from ``train dpo``, read as RTO's implicit token reward
with the β it was trained with) and its settings. Prompts reach the trainer as a prompts
file (rows with a ``prompt`` field, text or chat messages), never as pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

RL_TRAINERS = ("ppo", "grpo")
# The `editalign train` method that builds each reward source from edit pairs.
REWARD_TRAINERS = {"token": "token-rm", "sequence": "rm", "dpo": "dpo"}
DPO_DEFAULT_BETA = 0.1  # TRL's DPOConfig β


@dataclass(frozen=True)
class RLMethod:
    """An RL method: trainer × reward source, with its settings."""

    trainer: str  # ppo | grpo
    reward: str  # token | sequence | dpo
    learning_rate: float | None = None  # None: the trainer's default
    args: tuple[str, ...] = ()  # further `editalign train TRAINER` flags (tuned ones first)
    reward_args: tuple[str, ...] = ()  # flags of the reward's trainer (token-rm, rm, dpo)
    dpo_beta: float = DPO_DEFAULT_BETA  # reward dpo: the β the DPO policy is trained with

    def __post_init__(self) -> None:
        if self.trainer not in RL_TRAINERS:
            raise ValueError(f"RL trainer {self.trainer!r}: choose from {', '.join(RL_TRAINERS)}")
        if self.reward not in REWARD_TRAINERS:
            raise ValueError(f"reward {self.reward!r}: choose from {', '.join(REWARD_TRAINERS)}")

    @property
    def reward_trainer(self) -> str:
        return REWARD_TRAINERS[self.reward]

    @property
    def name(self) -> str:
        return f"{self.trainer}-{ {'sequence': 'seq'}.get(self.reward, self.reward)}"

    def reward_argv(self, *, policy: str, pairs: str | Path, output_dir: str | Path,
                    flags: Sequence[str] = ()) -> list[str]:
        """``editalign train REWARD_TRAINER`` flags: the reward from the pairs."""
        beta = ["--beta", str(self.dpo_beta)] if self.reward == "dpo" else []
        return ["--model", policy, "--data", str(pairs), "--output_dir", str(output_dir),
                *flags, *beta, *self.reward_args]

    def rl_argv(self, *, policy: str, prompts: str | Path, reward_model: str | Path,
                output_dir: str | Path, flags: Sequence[str] = ()) -> list[str]:
        """``editalign train TRAINER`` flags: RL from ``policy`` against the reward."""
        beta = ["--dpo_beta", str(self.dpo_beta)] if self.reward == "dpo" else []
        rate = [] if self.learning_rate is None else ["--learning_rate", str(self.learning_rate)]
        return ["--model", policy, "--prompts", str(prompts), "--reward_model", str(reward_model),
                "--reward", self.reward, *beta, "--output_dir", str(output_dir), *rate, *flags,
                *self.args]


def reward_is_trained(method: RLMethod, directory: Path) -> bool:
    """Whether ``directory`` holds a finished reward of this method's kind."""
    if method.reward == "dpo":
        from editalign.models import weights_problem

        return directory.is_dir() and weights_problem(directory) is None
    return (directory / "reward_config.json").is_file()


# How a caller runs one `editalign train TRAINER ARGV` (step: "reward_model" or "rl");
# returns the seconds it took (or anything the caller counts).
Execute = Callable[[str, str, list[str]], float]


def run_rl_stage(method: RLMethod, *, policy: str, prompts: str | Path, output_dir: str | Path,
                 reward_dir: str | Path, execute: Execute, pairs: str | Path | None = None,
                 reward_flags: Sequence[str] = (), rl_flags: Sequence[str] = (),
                 reward_trained: Callable[[Path], bool] | None = None) -> float:
    """Train the reward into ``reward_dir`` on ``pairs`` unless it is there already (a
    rerun), then RL from ``policy`` on ``prompts`` into ``output_dir``. ``pairs=None``: the
    reward is given (``reward_dir`` holds it) and nothing is trained before RL.
    ``reward_trained`` decides whether ``reward_dir`` already holds the reward (the
    benchmark's settings-keyed done marker); default :func:`reward_is_trained`. Returns the
    summed seconds of what ran."""
    reward_dir = Path(reward_dir)
    seconds = 0.0
    trained = reward_trained or (lambda directory: reward_is_trained(method, directory))
    if pairs is not None and not trained(reward_dir):
        seconds += execute("reward_model", method.reward_trainer, method.reward_argv(
            policy=policy, pairs=pairs, output_dir=reward_dir, flags=reward_flags))
    seconds += execute("rl", method.trainer, method.rl_argv(
        policy=policy, prompts=prompts, reward_model=reward_dir, output_dir=output_dir,
        flags=rl_flags))
    return seconds
