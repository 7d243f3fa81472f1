"""The reviser's reward-model filter: a scorer ``(prompts, responses) -> list[float]``.

``editalign revise --reward-model DIR`` keeps a revision when it scores at least
``--reward-margin`` above the original; this module turns a saved reward model into that
scorer. It is apart from the command so that ``editalign revise --help`` loads no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import EditPair
from editalign.revise.filters import Scorer
from editalign.reward_model import TokenRewardModel
from editalign.reward_sources import model_source, score_in_batches


def reward_model_scorer(path: str, *, batch_size: int = 8, max_length: int | None = None
                        ) -> Scorer:
    """A scorer ``(prompts, responses) -> list[float]`` from a reward model directory.

    Uses :class:`editalign.reward_model.TokenRewardModel` (written by ``editalign train
    token-rm|rm``) and its saved tokenizer; each response is tokenised exactly as
    ``editalign label`` does. The score of a response is the sum of its token rewards for a
    token-level model (``read_at="token"``) and the reward at its last token for a
    sequence-level one (``read_at="last"``), as in the reward metrics.
    """
    tokenizer = TokenRewardModel.load_tokenizer(path)
    model = TokenRewardModel.from_pretrained(path, tokenizer=tokenizer)
    model.eval()
    source = model_source(model)
    device = next(model.parameters()).device
    config = LabelingConfig(max_length=max_length)

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        # Labelled as a pair whose sides are both the response: the tokenisation and
        # truncation of `editalign label`, one side read.
        pairs = [EditPair(prompt=p, original=r, revised=r, id=str(i))
                 for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
        labeled, _ = label_pairs(pairs, tokenizer, config, strict=True)
        sides = [lp.revised for lp in labeled]
        scored = score_in_batches(
            source, [s.input_ids[:s.response_start] for s in sides],
            [s.input_ids[s.response_start:] for s in sides], tokenizer.pad_token_id,
            batch_size, names=[f"pair {lp.id!r} (revised)" for lp in labeled], device=device)
        return [row.sequence for row in scored]

    return score
