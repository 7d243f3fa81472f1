"""The benchmark task as files, the noisy SFT data, the initial policy, and edit pairs.

``BenchTask.build(config)`` makes the world and its prompts; ``task.write(dir)`` writes

- ``config.json``, ``world.json``;
- ``prompts.train.jsonl`` / ``prompts.test.jsonl``: one row per prompt, ``{"id", "prompt"
  (one user chat message), "split", "bench": {entity, kind, name, facts, asked}}``:
  everything the gold judge needs,
  so ``editalign eval winrate --judge gold --prompts prompts.test.jsonl`` needs no world;
- ``sft_noisy.jsonl``: ``responses_per_prompt`` noisy responses per training prompt, with
  the clean response and every planted error (kind, span, fix) next to it.

:func:`train_initial_policy` fine-tunes a model on the noisy responses (plain causal-LM
loss on the response tokens) so that it makes the same localised errors;
:func:`make_edit_pairs` revises the policy's own samples into :class:`EditPair` rows.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from editalign.bench.judge import GoldJudge
from editalign.bench.responses import render_response
from editalign.bench.reviser import revise
from editalign.bench.world import (
    BenchConfig,
    BenchPrompt,
    World,
    build_prompts,
    build_world,
    grounded_value_error,
)
from editalign.data.jsonl import write_jsonl
from editalign.data.pairs import EditPair
from editalign.data.prompts import encode_example

logger = logging.getLogger(__name__)


@dataclass
class BenchTask:
    config: BenchConfig
    world: World
    prompts: list[BenchPrompt]

    @classmethod
    def build(cls, config: BenchConfig | None = None) -> BenchTask:
        config = config or BenchConfig()
        world = build_world(config)
        return cls(config, world, build_prompts(world, config))

    def split(self, name: str) -> list[BenchPrompt]:
        return [p for p in self.prompts if p.split == name]

    def rows(self, split: str) -> list[dict[str, Any]]:
        """Prompts-file rows (see the module docstring)."""
        return [p.row(self.world) for p in self.split(split)]

    def noisy_sft_rows(self) -> list[dict[str, Any]]:
        """Noisy responses to the training prompts: the initial policy's SFT data."""
        rng = random.Random(f"sft-{self.config.seed}")
        out = []
        for prompt in self.split("train"):
            row = prompt.row(self.world)
            entity, distractor = prompt.shown(self.world)
            value_error = None
            if self.config.task == "grounded":
                value_error = grounded_value_error(entity, distractor, self.config)
            for k in range(self.config.responses_per_prompt):
                noisy = render_response(entity, prompt.asked, rng, self.config,
                                        value_error=value_error)
                out.append({"id": f"{prompt.id}-{k}", "prompt": row["prompt"],
                            "response": noisy.text, "clean": noisy.clean,
                            "errors": [e.to_dict() for e in noisy.errors],
                            "stated": list(noisy.stated), "bench": row["bench"]})
        return out

    def write(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        (out / "world.json").write_text(json.dumps(self.world.to_dict(), indent=1) + "\n")
        for split in ("train", "test"):
            write_jsonl(out / f"prompts.{split}.jsonl", self.rows(split))
        write_jsonl(out / "sft_noisy.jsonl", self.noisy_sft_rows())
        return out

    @classmethod
    def load(cls, directory: str | Path) -> BenchTask:
        """The task a directory written by :meth:`write` holds (rebuilt from its config)."""
        path = Path(directory)
        data = json.loads((path / "config.json").read_text())
        known = {f.name for f in fields(BenchConfig)}
        task = cls.build(BenchConfig(**{k: v for k, v in data.items() if k in known}))
        saved = World.from_dict(json.loads((path / "world.json").read_text()))
        if saved.to_dict() != task.world.to_dict():
            raise ValueError(f"{path}/world.json differs from the world its config.json "
                             "generates; was it written by another editalign version?")
        return task


# --------------------------------------------------------------------------- statistics


def error_rates(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Measured rates of the planted errors, in the units the config's rates use.

    ``wrong_value`` per stated attribute, ``hedge`` per sentence, ``filler`` per response;
    on the grounded task also ``distractor_value`` per stated attribute of a prompt with a
    distractor card, ``invented_value`` per stated attribute and ``swapped_value`` per
    stated town (home town or birthplace).
    """
    counts = Counter(e["kind"] for row in rows for e in row["errors"])
    sentences = sum(len(row["stated"]) for row in rows)
    rates = {"wrong_value": counts["wrong_value"] / max(sentences, 1),
             "hedge": counts["hedge"] / max(sentences, 1),
             "filler": counts["filler"] / max(len(rows), 1)}
    if any(row["bench"].get("task") == "grounded" for row in rows):
        with_distractor = sum(len(row["stated"]) for row in rows if row["bench"]["distractor"])
        towns = sum(a in ("city", "birthplace") for row in rows for a in row["stated"])
        rates.update(distractor_value=counts["distractor_value"] / max(with_distractor, 1),
                     invented_value=counts["invented_value"] / max(sentences, 1),
                     swapped_value=counts["swapped_value"] / max(towns, 1))
    return rates


def judge_summary(responses: Sequence[str], infos: Sequence[dict[str, Any]],
                  judge: GoldJudge | None = None) -> dict[str, float]:
    """Mean gold score and error counts per response."""
    judge = judge or GoldJudge()
    verdicts = [judge.verdict(r, i) for r, i in zip(responses, infos, strict=True)]
    n = max(len(verdicts), 1)
    asked = sum(len(i.get("asked") or i["facts"]) for i in infos) or 1
    return {
        "n": len(verdicts),
        "score": sum(v.score for v in verdicts) / n,
        "correct_rate": sum(len(v.correct) for v in verdicts) / asked,
        "wrong_per_response": sum(len(v.wrong) for v in verdicts) / n,
        "unwanted_per_response": sum(len(v.unwanted) for v in verdicts) / n,
        "perfect": sum(v.score >= 1.0 for v in verdicts) / n,
    }


# --------------------------------------------------------------------------- edit pairs


def make_edit_pairs(rows: Sequence[dict[str, Any]], responses: Sequence[str],
                    judge: GoldJudge | None = None, *, keep_unchanged: bool = True
                    ) -> list[EditPair]:
    """Revise each response to its prompts row into an :class:`EditPair`.

    ``meta`` keeps the bench info, the edits' kinds and the gold scores of both sides.
    """
    judge = judge or GoldJudge()
    pairs = []
    for i, (row, response) in enumerate(zip(rows, responses, strict=True)):
        revision = revise(response, row["bench"])
        if not revision.changed and not keep_unchanged:
            continue
        pairs.append(EditPair(
            prompt=row["prompt"], original=response, revised=revision.text,
            id=f"{row['id']}-{i}",
            meta={"source": "bench", "bench": row["bench"],
                  "edits": dict(Counter(e.kind for e in revision.edits)),
                  "score_original": judge.score(response, row["bench"]),
                  "score_revised": judge.score(revision.text, row["bench"])}))
    return pairs


# --------------------------------------------------------------------------- initial policy


@dataclass
class PolicySFTConfig:
    """The initial policy's noisy SFT (a short hand-written loop, see train_initial_policy)."""

    steps: int = 1000  # 300 leaves tiny-bench knowing ~20% of the facts, 1000 ~75%
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0
    max_length: int = 256
    log_every: int = 50


def _warmup_cosine(config: PolicySFTConfig) -> Callable[[int], float]:
    """The learning-rate factor of step ``step``: linear warm-up, then cosine decay to 0."""

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_at


def _sft_batch(examples: Sequence[tuple[list[int], int]], order: list[int], rng: random.Random,
               batch_size: int, pad: int) -> tuple[Any, Any, Any]:
    """The next ``batch_size`` examples (``order`` is consumed in place and reshuffled when
    empty), right-padded: input ids, attention mask, labels (-100 off the response)."""
    from editalign.padding import pad_rows

    batch = []
    while len(batch) < batch_size:
        if not order:
            order.extend(range(len(examples)))
            rng.shuffle(order)
        batch.append(examples[order.pop()])
    input_ids, mask = pad_rows([ids for ids, _ in batch], pad)
    labels, _ = pad_rows([[-100] * min(start, len(ids)) + ids[start:] for ids, start in batch],
                         -100)
    return input_ids, mask, labels


def train_initial_policy(rows: Sequence[dict[str, Any]], model: str, out_dir: str | Path, *,
                         config: PolicySFTConfig | None = None) -> list[dict[str, float]]:
    """Fine-tune ``model`` on the noisy responses and save it to ``out_dir``.

    A short hand-written loop (AdamW, linear warm-up then cosine decay, loss on response
    tokens and EOS only) rather than TRL's SFTTrainer: it is a few seconds on tiny-bench,
    bitwise reproducible from the seed, and needs no data set preprocessing; the result is an
    ordinary ``save_pretrained`` folder every trainer reads. Returns the loss log.
    """
    import torch

    from editalign.models import load_model, load_tokenizer

    config = config or PolicySFTConfig()
    tokenizer = load_tokenizer(model)
    policy = load_model(model, dtype=torch.float32)
    examples = [encode_example(tokenizer, r["prompt"], r["response"], config.max_length)
                for r in rows]
    if not examples:
        raise ValueError("no SFT rows")
    pad = tokenizer.pad_token_id
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config))
    order: list[int] = []
    log: list[dict[str, float]] = []
    policy.train()
    started = time.perf_counter()
    running = 0.0
    for step in range(config.steps):
        input_ids, mask, labels = _sft_batch(examples, order, rng, config.batch_size, pad)
        loss = policy(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            n = (step % config.log_every) + 1
            entry = {"step": step + 1, "loss": running / n,
                     "seconds": time.perf_counter() - started}
            log.append(entry)
            logger.info("initial policy SFT step %d: loss %.4f", step + 1, entry["loss"])
            running = 0.0
    policy.eval()
    out = Path(out_dir)
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_log.json").write_text(json.dumps({"config": config.__dict__, "log": log},
                                                 indent=2) + "\n")
    return log

