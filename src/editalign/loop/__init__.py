"""``editalign loop``: sample → revise → label → train → evaluate, round after round.

Round ``k`` (1-based) samples the current policy (the initial one in round 1) on the
training prompts, has the samples minimally edited (an LLM behind an OpenAI-compatible
endpoint through ``editalign revise``, with its filters and request cache; or, for the
generated benchmark task, its programmatic reviser), labels the pairs that carry an edit
with the policy's tokenizer, trains the policy on them (FIGA by default, any supervised
trainer and its flags) and measures the new policy's win rate against the *initial* one
(``editalign eval winrate``, any judge it supports). Round ``k + 1`` starts from round
``k``'s policy.

Every stage except the programmatic reviser runs as a child process (``python -m
editalign.cli ...``) with its output in a log file beside its artefacts, so a crash stays
contained and its log stays readable. Layout of ``OUT``::

    loop_config.json          the resolved configuration (a rerun must match it)
    bench/                    the generated task, when the loop runs on it (built once)
    round{k}/sample.jsonl     the policy's samples (rows revise/annotate/label read)
    round{k}/revised.jsonl    kept edit pairs (+ revised.dropped.jsonl with reasons)
    round{k}/pairs.jsonl      the pairs with an edit: the training data
    round{k}/labels/          `editalign label` output
    round{k}/policy/          the trained policy (the next round's starting point)
    round{k}/winrate.json     win rate against the initial policy (+ eval_samples.jsonl)
    round{k}/{stage}.log      each child's output; round{k}/{stage}.done: its marker
    results.json, results.md, winrate.png, report.md

A stage whose ``.done`` marker exists is skipped, so rerunning the same command after a
kill resumes at the first unfinished stage; ``sample`` also resumes within its file and
``revise`` answers every request it already paid for from its cache.
"""

from __future__ import annotations

from editalign.loop.config import (
    BENCH_DEFAULTS,
    POLICY_METHODS,
    ConfigError,
    bench_init_flags,
    command_flags,
    load_config,
    resolve_config,
    train_flags,
)
from editalign.loop.rounds import Loop, bench_revise
from editalign.loop.runner import Runner, StageFailed, run_command

__all__ = ["BENCH_DEFAULTS", "POLICY_METHODS", "ConfigError", "Loop", "Runner", "StageFailed",
           "bench_init_flags", "bench_revise", "command_flags",
           "load_config", "resolve_config", "run_command", "train_flags"]
