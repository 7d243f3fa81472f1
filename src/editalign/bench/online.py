"""The benchmark's online arms: ``figa-online`` and ``sft-online``.

The one-round arms train once on the initial policy's revised samples
(``pairs.train.jsonl``: ``k`` samples of every training prompt). An online arm spends the
same budget in ``ONLINE_ROUNDS`` rounds: round ``r`` samples the *current* policy on a
``1/R`` share of the training prompts (prompts ``r, r + R, ...``; ``k`` samples each, at the
temperature and length of ``bench init``'s quick/full presets), revises the samples with the
programmatic reviser, and trains on the pairs with an edit for ``1/R`` of the optimizer steps
(the remainder going to the first rounds), starting from the last round's policy. So both
arms see about the same number of revised samples and take the same optimizer steps, with
the same tuned flags; what differs is whose errors the later edits fix. Each round's
learning-rate schedule restarts (linear decay within the round).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editalign.bench.task import make_edit_pairs
from editalign.data.jsonl import read_jsonl
from editalign.data.pairs import save_pairs_jsonl
from editalign.generation import SamplingConfig, sample_responses

logger = logging.getLogger(__name__)

ONLINE = {"figa-online": "figa", "sft-online": "sft"}
ONLINE_ROUNDS = 3
# bench init's sampling of its pairs under the reported presets (--quick / --full)
SAMPLE_TEMPERATURE = 1.0
SAMPLE_MAX_NEW_TOKENS = 64


def round_steps(total: int, rounds: int) -> list[int]:
    """``total`` optimizer steps over ``rounds``, the remainder to the first rounds."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


TrainRound = Callable[[Path, Path, Path, int], None]


def train_online(method: str, bench: Path, out: Path, config: Any,
                 train_round: TrainRound) -> tuple[Path, float]:
    """Train an online arm into ``out/method/round{r}/policy``; returns the last policy and
    the seconds spent (sampling, revising and training). Resumable per round.

    ``train_round(policy, pairs, output_dir, steps)`` trains one round with the base
    method's tuned flags; the runner supplies it (so this module does not import the runner).
    """
    from editalign.models import load_model, load_tokenizer

    rows = read_jsonl(bench / "prompts.train.jsonl")
    n_pairs = len(read_jsonl(bench / "pairs.train.jsonl"))
    per_prompt = max(1, round(n_pairs / len(rows)))
    steps = round_steps(config.max_steps, ONLINE_ROUNDS)
    policy = bench / "policy"
    target = out / method
    seconds = 0.0
    for r in range(ONLINE_ROUNDS):
        round_dir = target / f"round{r + 1}"
        marker = round_dir / "done.json"
        if marker.is_file():
            seconds += json.loads(marker.read_text())["seconds"]
            policy = round_dir / "policy"
            continue
        started = time.perf_counter()
        share = rows[r::ONLINE_ROUNDS] * per_prompt
        model, tokenizer = load_model(str(policy)), load_tokenizer(str(policy))
        sampling = SamplingConfig(max_new_tokens=SAMPLE_MAX_NEW_TOKENS,
                                  temperature=SAMPLE_TEMPERATURE,
                                  seed=1000 * config.seed + r, batch_size=32)
        texts = [s.text for s in sample_responses(model, tokenizer,
                                                  [row["prompt"] for row in share], sampling)]
        del model
        pairs = [p for p in make_edit_pairs(share, texts) if p.has_edit]
        if not pairs:
            raise RuntimeError(f"{method} round {r + 1}: the reviser changed none of "
                               f"{len(texts)} samples")
        data = save_pairs_jsonl(pairs, round_dir / "pairs.edited.jsonl")
        train_round(policy, data, round_dir / "policy", steps[r])
        elapsed = time.perf_counter() - started
        marker.write_text(json.dumps({"round": r + 1, "samples": len(texts),
                                      "pairs": len(pairs), "steps": steps[r],
                                      "seconds": elapsed}) + "\n")
        seconds += elapsed
        policy = round_dir / "policy"
    return policy, seconds
