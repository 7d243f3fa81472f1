"""The one table of judges: every name ``--judge`` accepts, mapped to what builds it.

A judge answers ``compare(rows, policy_responses, reference_responses)`` with a
:class:`editalign.eval.judges.Judgement`. This table sits above both :mod:`editalign.eval`
(the reward-model and API judges) and :mod:`editalign.bench` (the gold judge), so neither
imports the other for it. A new judge: write its class where it belongs and add a row here.

Models and trainers have their tables beside the code that resolves them:
:func:`editalign.models.register_model` and the ``editalign.models`` entry points (``--model``) and
:data:`editalign.train.common.TRAINERS` (``editalign train METHOD``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from editalign.bench.judge import GoldWinJudge
from editalign.eval.judges import ApiJudge, RewardModelJudge

JudgeFactory = Callable[..., Any]
"""``factory(target, judge_model=..., api_key_env=...)``: ``target`` is what follows the
colon in ``KIND:TARGET`` (empty for ``gold``)."""


def _gold(target: str, **_: Any) -> Any:
    return GoldWinJudge()


def _reward_model(target: str, **_: Any) -> Any:
    return RewardModelJudge(target)


def _api(target: str, *, judge_model: str, api_key_env: str) -> Any:
    return ApiJudge(target, judge_model, api_key_env=api_key_env)


# kind -> (factory, whether the kind takes a target after the colon)
JUDGES: dict[str, tuple[JudgeFactory, bool]] = {
    "gold": (_gold, False),
    "rm": (_reward_model, True),
    "api": (_api, True),
}


def make_judge(spec: str, *, judge_model: str = "gpt-4o-mini",
               api_key_env: str = "OPENAI_API_KEY") -> Any:
    """``gold``, ``rm:DIR`` or ``api:URL``: the judge the ``--judge`` flag names."""
    kind, sep, target = spec.partition(":")
    entry = JUDGES.get(kind)
    if entry is not None and (bool(sep and target) if entry[1] else not sep):
        return entry[0](target, judge_model=judge_model, api_key_env=api_key_env)
    raise ValueError(f"unknown judge {spec!r}: use gold, rm:DIR or api:URL")
