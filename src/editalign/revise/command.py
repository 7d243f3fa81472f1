"""The reward model filter of ``editalign revise`` (the command is editalign.commands.revise)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

REWARD_MODEL_CLASS = "editalign.reward_model:TokenRewardModel"


def reward_model_scorer(path: str, *, batch_size: int = 8, max_length: int | None = None) -> Any:
    """A scorer ``(prompts, responses) -> list[float]`` from a reward model directory.

    Uses :class:`editalign.reward_model.TokenRewardModel` (written by ``editalign train
    token-rm|rm``) and its saved tokenizer; each response is tokenised exactly as
    ``editalign label`` does. The score of a response is the sum of its token rewards for a
    token-level model (``read_at="token"``) and the reward at its last token for a
    sequence-level one (``read_at="last"``), as in the reward metrics.
    """
    module, _, name = REWARD_MODEL_CLASS.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(f"--reward-model needs {REWARD_MODEL_CLASS}, which this version of "
                         "editalign does not have; use --reward-scorer MODULE:FUNCTION") from None
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.pairs import EditPair
    from editalign.eval.pair_scoring import score_labeled

    tokenizer = cls.load_tokenizer(path)
    model = cls.from_pretrained(path, tokenizer=tokenizer)
    last = model.reward_config.read_at == "last"
    config = LabelingConfig(max_length=max_length)

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        pairs = [EditPair(prompt=p, original=r, revised=r, id=str(i))
                 for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
        labeled, _ = label_pairs(pairs, tokenizer, config, strict=True)
        rewards = score_labeled(model, labeled, tokenizer.pad_token_id, batch_size)
        return [float(r.revised_rewards[-1] if last else r.revised_rewards.sum())
                for r in rewards]

    return score
