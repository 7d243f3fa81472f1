"""Revise the worse response of each pair with an LLM and filter the results.

For every input pair the reviser sends the pair's ``original`` (the worse response) to
the LLM with a template, cleans the answer, and runs the filters in order: completion
(empty or truncated), edit ratio (optionally retried once with the stricter template),
then, over all survivors at once, the reward filter when a scorer is given. Kept rows
become :class:`EditPair` with ``revised`` = the LLM's revision and ``meta["revise"]``
recording the model, template, edit ratio and every filter decision; dropped and failed
rows are returned with their reasons. Output order is input order.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from editalign.data.pairs import EditPair, parse_field_mapping
from editalign.llm.client import AnswerTooLarge, ChatClient, RequestFailed
from editalign.revise.filters import (
    Decision,
    Scorer,
    check_completion,
    check_edit_ratio,
    clean_completion,
    edit_ratio,
    reward_filter,
)
from editalign.revise.prompts import Template, prompt_text, reference_of

logger = logging.getLogger(__name__)


@dataclass
class ReviseOptions:
    """Filter settings. ``max_edit_ratio=None`` turns the edit-ratio filter off."""

    max_edit_ratio: float | None = 0.5
    strict_template: Template | None = None
    reward_margin: float = 0.0


@dataclass
class RowOutcome:
    """What happened to one input row: ``status`` is kept, dropped or failed."""

    index: int
    pair: EditPair
    status: str
    reason: str = ""
    revision: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """A JSON line for the dropped/failed file: the row, the candidate and why."""
        return {"id": self.pair.id, "index": self.index, "status": self.status,
                "reason": self.reason, "candidate": self.revision,
                "decisions": [d.to_dict() for d in self.decisions], **self.info,
                "pair": self.pair.to_dict()}


@dataclass
class ReviseResult:
    outcomes: list[RowOutcome]
    stats: dict[str, Any]
    seconds: float

    @property
    def kept(self) -> list[EditPair]:
        return [o.pair for o in self.outcomes if o.status == "kept"]

    @property
    def dropped(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if o.status == "dropped"]

    @property
    def failed(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> str:
        counts = collections.Counter(o.status for o in self.outcomes)
        reasons = collections.Counter(o.reason.split(" (")[0].split(" > ")[0]
                                      for o in self.dropped)
        unchanged = sum(1 for p in self.kept if not p.has_edit)
        s = self.stats
        lines = [
            f"revised {len(self.outcomes)} rows in {self.seconds:.1f} s: kept {counts['kept']} "
            f"({unchanged} unchanged), dropped {counts['dropped']}, failed {counts['failed']}",
            f"requests sent {s['requests_sent']}, answered from cache {s['cache_hits']}, "
            f"tokens {s['prompt_tokens']} in / {s['completion_tokens']} out",
        ]
        if s["retries"]:
            lines.append("retries: " + ", ".join(f"{k} x{v}" for k, v in s["retries"].items()))
        for reason, n in reasons.most_common():
            lines.append(f"  dropped, {reason}: {n}")
        if counts["failed"]:
            lines.append(f"  failed (not cached; rerun the same command to retry them): "
                         f"{counts['failed']}, e.g. {self.failed[0].reason}")
        return "\n".join(lines)


async def _revise_one(client: ChatClient, template: Template, options: ReviseOptions,
                      index: int, pair: EditPair) -> RowOutcome:
    outcome = RowOutcome(index, pair, "dropped")
    reference = reference_of(pair) if template.needs_reference else None
    if template.needs_reference and reference is None:
        outcome.reason = f"no reference answer (template {template.name!r} needs one)"
        return outcome
    attempts = [(template, template.render(prompt_text(pair), pair.original, reference))]
    if options.strict_template is not None:
        strict = options.strict_template
        attempts.append((strict, strict.render(prompt_text(pair), pair.original, reference)))
    for used, messages in attempts:
        try:
            completion = await client.complete(messages)
        except AnswerTooLarge as err:
            # Dropped, not failed: the server answered, with something no revision can be.
            # Only a short prefix is kept, for the dropped file.
            outcome.reason = str(err)
            outcome.info = {"template": used.name, "answer_prefix": err.prefix}
            return outcome
        except RequestFailed as err:
            outcome.status, outcome.reason = "failed", str(err)
            return outcome
        text = clean_completion(completion.text)
        outcome.revision = text
        outcome.info = {"template": used.name, "finish_reason": completion.finish_reason,
                        "cached": completion.cached, "served_model": completion.model}
        decision = check_completion(text, completion.finish_reason)
        outcome.decisions.append(decision)
        if not decision.kept:
            outcome.reason = decision.reason
            return outcome
        ratio = edit_ratio(pair.original, text)
        outcome.info["edit_ratio"] = ratio
        decision = check_edit_ratio(ratio, options.max_edit_ratio)
        outcome.decisions.append(decision)
        if decision.kept:
            outcome.status, outcome.reason = "kept", ""
            return outcome
        outcome.reason = decision.reason
    if len(attempts) > 1:
        outcome.reason += " after a retry with the strict template"
    return outcome


def _finish(outcome: RowOutcome, model: str) -> None:
    """Turn a kept outcome's pair into the revised EditPair with its provenance in meta."""
    pair = outcome.pair
    meta = copy.deepcopy(pair.meta)
    if pair.revised != pair.original:
        meta.setdefault("input_revised", pair.revised)
    served = outcome.info.get("served_model")
    meta["revise"] = {
        # The model that answered (the server's word), and the one asked for when they differ.
        "model": served or model,
        **({"requested_model": model} if served and served != model else {}),
        "template": outcome.info["template"],
        "edit_ratio": round(outcome.info["edit_ratio"], 6),
        "finish_reason": outcome.info["finish_reason"],
        "filters": [d.to_dict() for d in outcome.decisions],
        **({"reward": outcome.info["reward"]} if "reward" in outcome.info else {}),
    }
    outcome.pair = EditPair(prompt=copy.deepcopy(pair.prompt), original=pair.original,
                            revised=outcome.revision or "", id=pair.id, meta=meta)


async def revise_pairs_async(pairs: Sequence[EditPair], client: ChatClient, template: Template,
                             options: ReviseOptions | None = None, *,
                             scorer: Scorer | None = None, progress: bool = False,
                             ) -> ReviseResult:
    """Revise all pairs concurrently (the client's semaphore bounds requests in flight)."""
    from tqdm.auto import tqdm

    options = options or ReviseOptions()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(_revise_one(client, template, options, i, p))
             for i, p in enumerate(pairs)]
    outcomes: list[RowOutcome] = []
    try:
        with tqdm(total=len(tasks), desc="revise", unit="row", disable=not progress) as bar:
            for next_done in asyncio.as_completed(tasks):
                outcome = await next_done
                outcomes.append(outcome)
                bar.update(1)
                bar.set_postfix(cached=client.stats.cache_hits, sent=client.stats.requests,
                                refresh=False)
    finally:
        for task in tasks:
            task.cancel()
    outcomes.sort(key=lambda o: o.index)
    kept = [o for o in outcomes if o.status == "kept"]
    if scorer is not None and kept:
        verdicts = reward_filter(scorer, [prompt_text(o.pair) for o in kept],
                                 [o.pair.original for o in kept],
                                 [o.revision or "" for o in kept], options.reward_margin,
                                 ids=[o.pair.id for o in kept])
        for outcome, (decision, scores) in zip(kept, verdicts, strict=True):
            outcome.decisions.append(decision)
            outcome.info["reward"] = scores
            if not decision.kept:
                outcome.status, outcome.reason = "dropped", decision.reason
    for outcome in outcomes:
        if outcome.status == "kept":
            _finish(outcome, client.config.model)
    served = {o.info.get("served_model") for o in outcomes} - {None, client.config.model}
    if served:
        logger.warning("the server says %s answered, not the requested %r; the pairs record "
                       "the model that answered (meta.revise.model, requested_model)",
                       ", ".join(sorted(map(repr, served))), client.config.model)
    return ReviseResult(outcomes, client.stats.to_dict(), time.perf_counter() - started)


def revise_pairs(pairs: Sequence[EditPair], client_factory: Any, template: Template,
                 options: ReviseOptions | None = None, *, scorer: Scorer | None = None,
                 progress: bool = False, sigterm_interrupts: bool = False) -> ReviseResult:
    """Synchronous wrapper: ``client_factory()`` makes the :class:`ChatClient` inside the loop.

    ``sigterm_interrupts``: SIGTERM (a scheduler, ``kill``) cancels the run the way Ctrl-C
    does and ``KeyboardInterrupt`` comes out (main thread only). The loop's own handler
    cancels the task, so the cancellation unwinds httpx/anyio as asyncio's Ctrl-C does; it
    does not go through SIGINT, which a background job of a shell script inherits ignored
    (``asyncio.run`` then installs no SIGINT handler, and a SIGINT sent on would be lost).
    """
    handle_sigterm = sigterm_interrupts and threading.current_thread() is threading.main_thread()
    terminated = False

    def on_sigterm(task: asyncio.Task[Any]) -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    async def run() -> ReviseResult:
        if handle_sigterm:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm,
                                                          asyncio.current_task())
        async with client_factory() as client:
            return await revise_pairs_async(pairs, client, template, options, scorer=scorer,
                                            progress=progress)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return asyncio.run(run())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handle_sigterm:
            signal.signal(signal.SIGTERM, previous)  # the closed loop left SIG_DFL


def revise_fields(items: Sequence[str]) -> dict[str, str] | None:
    """``--field`` items with ``response=COL`` expanded to ``original=COL revised=COL``."""
    expanded: list[str] = []
    for item in items:
        key, sep, column = (part.strip() for part in item.partition("="))
        if key == "response" and sep and column:
            expanded += [f"original={column}", f"revised={column}"]
        else:
            expanded.append(item)
    return parse_field_mapping(expanded) if expanded else None
