"""Win rate of a policy against a reference model (docs/methods.md §5).

For every prompt both models sample one response with the same settings and seeds; a
judge prefers one (win 1, tie 0.5, loss 0). Reported next to the mean and its 95%
bootstrap interval: the KL of the policy to the reference on the policy's own samples
(mean over prompts of Σ_t log π_A(y_t) − log π_B(y_t), temperature 1, EOS included) and
both sides' mean response length in tokens, so a win bought by drifting far or writing
longer is visible. ``editalign eval winrate`` is the command.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from editalign.generation import Sample, SamplingConfig, sample_responses

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- statistics


def win_rate(outcomes: Sequence[float]) -> float:
    if not outcomes:
        raise ValueError("no outcomes")
    return float(sum(outcomes) / len(outcomes))


def bootstrap_interval(values: Sequence[float], *, n_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling prompts with replacement)."""
    import numpy as np

    if not values:
        raise ValueError("no values")
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(n_resamples, len(data)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def seeds_and_prompts_interval(values: Sequence[Sequence[float]], *, n_resamples: int = 2000,
                               level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a seeds × prompts table, resampling both.

    Resampling prompts alone (:func:`bootstrap_interval` of the per-prompt means) treats the
    trained models as fixed: it says how much the figure would move on other prompts, not on
    another training run. Here each resample draws the seeds and, independently, the prompts
    with replacement and takes the mean over every drawn (seed, prompt) cell, so the
    interval also carries the spread between training seeds (a two-level bootstrap).
    """
    import numpy as np

    table = np.asarray(values, dtype=float)
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"need a non-empty seeds × prompts table, got shape {table.shape}")
    n_seeds, n_prompts = table.shape
    rng = np.random.default_rng(seed)
    # How often each seed and each prompt is drawn (n draws with replacement: multinomial
    # counts); the mean over the drawn cells is w_seeds · table · w_prompts / (n_s · n_p).
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_resamples)
    prompt_counts = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts),
                                    size=n_resamples)
    means = np.einsum("rs,sp,rp->r", seed_counts, table, prompt_counts) / (n_seeds * n_prompts)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


# --------------------------------------------------------------------------- log-probabilities


def sequence_logprobs(model: Any, samples: Sequence[Sample], batch_size: int = 16
                      ) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) of every sample's response tokens under ``model`` (T = 1)."""
    import torch
    import torch.nn.functional as F

    from editalign.padding import pad_rows

    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        # Padding id 0: the mask hides it, and any id is a valid embedding index.
        ids, mask = pad_rows([s.prompt_ids + s.response_ids for s in chunk], 0)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = F.log_softmax(logits.float(), dim=-1)
        for j, s in enumerate(chunk):
            start, n = len(s.prompt_ids), len(s.response_ids)
            if n == 0:
                out.append(0.0)
                continue
            # position p predicts token p + 1
            positions = torch.arange(start - 1, start - 1 + n, device=logp.device)
            tokens = torch.tensor(s.response_ids, device=logp.device)
            out.append(float(logp[j, positions, tokens].sum()))
    return out


# --------------------------------------------------------------------------- the evaluation


def read_prompt_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows with a ``prompt`` (text or chat messages) from JSONL or a JSON list."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        rows = data.get("data", data) if isinstance(data, dict) else data
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {n}: not JSON ({err.msg})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str | list):
            raise ValueError(f"{path}: row {i} has no 'prompt' (text or chat messages)")
        problem = _prompt_problem(row["prompt"])
        if problem is not None:
            where, what = problem
            raise ValueError(f"{path}: row {i}, field {where!r}: {what}")
    return rows[:limit] if limit else rows


def _prompt_problem(prompt: str | list[Any]) -> tuple[str, str] | None:
    """(field, what is wrong) when a prompt cannot be rendered and sampled from."""

    def bad_text(text: str) -> str | None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"not valid Unicode text (a lone surrogate at character {err.start})"
        return None

    if isinstance(prompt, str):
        if not prompt:
            return "prompt", "empty text: there is nothing to sample a response to"
        problem = bad_text(prompt)
        return None if problem is None else ("prompt", problem)
    if not prompt:
        return "prompt", "an empty list of chat messages"
    for j, message in enumerate(prompt):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and message["role"] and isinstance(message.get("content"), str)):
            return f"prompt[{j}]", "a chat message must be an object with string 'role' " \
                "and 'content'"
        for key in ("role", "content"):
            problem = bad_text(message[key])
            if problem is not None:
                return f"prompt[{j}].{key}", problem
    return None


@dataclass
class WinRateResult:
    policy: str
    reference: str
    judge: str
    n: int
    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    kl: float | None
    length_policy: float
    length_reference: float
    score_policy: float | None
    score_reference: float | None
    sampling: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        head = ("| policy | reference | judge | n | win rate | 95% CI | W/T/L | KL | "
                "len policy | len ref | score policy | score ref |")
        rule = "|" + "---|" * 12
        row = (f"| {self.policy} | {self.reference} | {self.judge} | {self.n} | "
               f"{self.win_rate:.3f} | [{self.ci_low:.3f}, {self.ci_high:.3f}] | "
               f"{self.wins}/{self.ties}/{self.losses} | {fmt(self.kl)} | "
               f"{self.length_policy:.1f} | {self.length_reference:.1f} | "
               f"{fmt(self.score_policy)} | {fmt(self.score_reference)} |")
        return "\n".join([head, rule, row])


def evaluate_winrate(policy: str, reference: str, rows: Sequence[dict[str, Any]], judge: Any,
                     sampling: SamplingConfig | None = None, *, n_resamples: int = 2000,
                     samples_out: str | Path | None = None) -> WinRateResult:
    """Sample both models on ``rows``' prompts, judge, and summarise (see the module doc)."""
    from editalign.models import load_model, load_tokenizer, tokenizer_fingerprint

    sampling = sampling or SamplingConfig()
    started = time.perf_counter()
    k = sampling.samples_per_prompt
    rows = [row for row in rows for _ in range(k)]  # k consecutive copies of each prompt
    prompts = [row["prompt"] for row in rows]
    tok_a, tok_b = load_tokenizer(policy), load_tokenizer(reference)
    model_a = load_model(policy)
    samples_a = sample_responses(model_a, tok_a, prompts, sampling)
    model_b = load_model(reference)
    samples_b = sample_responses(model_b, tok_b, prompts, sampling)
    kl = None
    if tokenizer_fingerprint(tok_a) == tokenizer_fingerprint(tok_b):
        lp_a = sequence_logprobs(model_a, samples_a, sampling.batch_size)
        lp_b = sequence_logprobs(model_b, samples_a, sampling.batch_size)
        kl = sum(a - b for a, b in zip(lp_a, lp_b, strict=True)) / len(lp_a)
    else:
        logger.warning("policy and reference tokenizers differ: KL not computed")
    texts_a, texts_b = [s.text for s in samples_a], [s.text for s in samples_b]
    judgement = judge.compare(rows, texts_a, texts_b)
    outcomes = judgement.outcomes
    per_prompt = [sum(outcomes[i:i + k]) / k for i in range(0, len(outcomes), k)]
    low, high = bootstrap_interval(per_prompt, n_resamples=n_resamples, seed=sampling.seed)

    def mean(xs: Sequence[float] | None) -> float | None:
        return None if xs is None else sum(xs) / len(xs)

    if samples_out:
        from editalign.outputs import atomic_open

        with atomic_open(samples_out) as f:
            for i, row in enumerate(rows):
                record = {"id": row.get("id", i // k), "sample": i % k, "prompt": row["prompt"],
                          "policy": texts_a[i], "reference": texts_b[i],
                          "outcome": outcomes[i]}
                if judgement.policy_scores is not None:
                    record["score_policy"] = judgement.policy_scores[i]
                    record["score_reference"] = judgement.reference_scores[i]
                if judgement.details:
                    record["judge"] = judgement.details[i]
                f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    return WinRateResult(
        policy=policy, reference=reference, judge=getattr(judge, "name", type(judge).__name__),
        n=len(outcomes), win_rate=win_rate(outcomes), ci_low=low, ci_high=high,
        wins=sum(o > 0.5 for o in outcomes), ties=sum(o == 0.5 for o in outcomes),
        losses=sum(o < 0.5 for o in outcomes), kl=kl,
        length_policy=sum(len(s.response_ids) for s in samples_a) / len(samples_a),
        length_reference=sum(len(s.response_ids) for s in samples_b) / len(samples_b),
        score_policy=mean(judgement.policy_scores),
        score_reference=mean(judgement.reference_scores),
        sampling=asdict(sampling), seconds=time.perf_counter() - started)
