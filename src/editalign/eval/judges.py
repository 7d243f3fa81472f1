"""Pairwise judges for the win rate: a reward model, an LLM behind an API.

Every judge answers ``compare(rows, policy_responses, reference_responses)`` with one
outcome per prompt (1 = the policy's response is better, 0.5 = tie, 0 = the reference's)
and, where it has them, per-response scores (``scores``). The benchmark's gold judge
(:class:`editalign.bench.judge.GoldWinJudge`) answers the same way; every judge the
``--judge`` flag can name is in one table, :data:`editalign.registry.JUDGES`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]


@dataclass
class Judgement:
    outcomes: list[float]
    policy_scores: list[float] | None = None
    reference_scores: list[float] | None = None
    details: list[dict[str, Any]] = field(default_factory=list)


def outcome(score_a: float, score_b: float, tolerance: float = 1e-9) -> float:
    """Win (1), tie (0.5) or loss (0) of ``a`` against ``b`` from their scores."""
    if abs(score_a - score_b) <= tolerance:
        return 0.5
    return 1.0 if score_a > score_b else 0.0


# --------------------------------------------------------------------------- reward model


class RewardModelJudge:
    """A reward model saved by ``editalign train token-rm|rm``: score = sum of its response
    rewards (every token for a token-level model, the last token for ``read_at="last"``)."""

    def __init__(self, directory: str, batch_size: int = 16) -> None:
        from editalign.reward_model import TokenRewardModel

        self.name = f"rm:{directory}"
        self.tokenizer = TokenRewardModel.load_tokenizer(directory)
        self.model = TokenRewardModel.from_pretrained(directory, tokenizer=self.tokenizer)
        self.batch_size = batch_size

    def scores(self, prompts: Sequence[Any], responses: Sequence[str],
               names: Sequence[str] | None = None) -> list[float]:
        """Sum of each response's rewards; NaN or inf raises, naming the row (``names[i]``,
        default ``row i``)."""
        from editalign.data.prompts import encode_example
        from editalign.reward_sources import model_source, score_in_batches

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = [encode_example(tok, p, r) for p, r in zip(prompts, responses, strict=True)]
        scored = score_in_batches(
            model_source(self.model), [ids[:start] for ids, start in encoded],
            [ids[start:] for ids, start in encoded], pad, self.batch_size,
            names=list(names) if names is not None else [f"row {j}" for j in
                                                         range(len(encoded))])
        return [row.sequence for row in scored]

    def compare(self, rows: Sequence[Row], policy: Sequence[str],
                reference: Sequence[str]) -> Judgement:
        prompts = [row["prompt"] for row in rows]
        ids = [row.get("id", i) for i, row in enumerate(rows)]
        a, b = (self.scores(prompts, responses, [f"the {side} response to prompts row {i} "
                                                 f"(id {row_id!r})"
                                                 for i, row_id in enumerate(ids)])
                for side, responses in (("policy", policy), ("reference", reference)))
        return Judgement([outcome(x, y) for x, y in zip(a, b, strict=True)], a, b)


# --------------------------------------------------------------------------- LLM judge

JUDGE_SYSTEM = "You are a careful, impartial judge of answer quality."
JUDGE_TEMPLATE = (
    "Here is a request and two responses to it.\n\n"
    "Request:\n{prompt}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response is better: correct, helpful, and free of unnecessary filler? Do not let "
    "the order or the length of the responses influence you. Answer with exactly one word: "
    "A, B, or tie.")
_VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def parse_preference(answer: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from a judge's answer (its first such word), else None."""
    match = _VERDICT.search(answer.strip())
    if match is None:
        return None
    word = match.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class ApiJudge:
    """An LLM behind an OpenAI-compatible ``POST {url}/chat/completions`` endpoint.

    Each pair is asked twice, once with the policy's response as A and once as B, so a
    judge that always prefers one position gives a tie; the outcome is the mean of the two
    (1, 0.75, 0.5, 0.25 or 0). An unparseable answer counts as a tie. The key is read from
    the environment variable ``api_key_env`` and only ever sent in the Authorization header.

    Requests go through the reviser's :class:`~editalign.llm.client.ChatClient` (no
    cache): the same total deadline per attempt, answer size limit, retries with back-off,
    refusal of redirects and redaction of the key from every error message.
    """

    def __init__(self, url: str, model: str = "gpt-4o-mini", *,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, concurrency: int = 4, backoff: float = 1.0,
                 transport: Any = None) -> None:
        from editalign.llm.client import ClientConfig

        self.name = f"api:{url}"
        self.config = ClientConfig(
            api_base=url, model=model, api_key=os.environ.get(api_key_env) or None,
            concurrency=concurrency, timeout=timeout, max_retries=max_retries,
            backoff_base=backoff, temperature=0.0, max_tokens=8)
        self.url = self.config.url
        self._transport = transport

    def _messages(self, prompt: Any, a: str, b: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_TEMPLATE.format(
                    prompt=_prompt_text(prompt), a=a, b=b)}]

    def _ask_all(self, questions: Sequence[tuple[Any, str, str]]) -> list[str]:
        import asyncio

        from editalign.llm.client import ChatClient, FatalRequestError, RequestFailed

        async def run() -> list[str]:
            async with ChatClient(self.config, transport=self._transport) as client:
                completions = await asyncio.gather(
                    *(client.complete(self._messages(*q)) for q in questions))
            return [c.text for c in completions]

        try:
            return asyncio.run(run())
        except FatalRequestError as err:
            raise RuntimeError(f"judge endpoint: {err}; check the URL, model and key") from None
        except RequestFailed as err:
            raise RuntimeError(f"judge endpoint {self.url} failed: {err}") from None

    def ask(self, prompt: Any, a: str, b: str) -> str:
        """The judge's answer to one question (A = ``a``, B = ``b``)."""
        return self._ask_all([(prompt, a, b)])[0]

    def compare(self, rows: Sequence[Row], policy: Sequence[str],
                reference: Sequence[str]) -> Judgement:
        questions = []
        for row, p, r in zip(rows, policy, reference, strict=True):
            questions += [(row["prompt"], p, r), (row["prompt"], r, p)]  # policy is A, then B
        answers = self._ask_all(questions)
        outcomes, details = [], []
        for k in range(len(rows)):
            first, second = (parse_preference(answers[2 * k]),
                             parse_preference(answers[2 * k + 1]))
            value = (({"A": 1.0, "B": 0.0}.get(first or "", 0.5))
                     + ({"A": 0.0, "B": 1.0}.get(second or "", 0.5))) / 2
            outcomes.append(value)
            details.append({"policy_first": first, "policy_second": second})
        return Judgement(outcomes, details=details)
