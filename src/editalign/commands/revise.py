"""``editalign revise``: minimally edit the worse response of each row with an LLM."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from editalign.commands.common import add_config_argument
from editalign.data.arguments import add_data_arguments

NAME = "revise"
HELP = ("minimally edit the worse response of each row with an LLM behind an "
        "OpenAI-compatible endpoint, then filter")
DESCRIPTION = ("Ask an LLM to minimally edit each row's original (worse) response; filter "
               "rewrites, truncated answers and (with a scorer) revisions that do not gain "
               "reward; writes EditPair JSONL. See docs/revise.md.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    add_data_arguments(p, ["data", "preset", "field_map", "split", "limit", "strict"], help={
        "data": "input rows: any file or preset `editalign label` reads; each row's original "
                "(worse) response is revised",
        "preset": "field layout of the data (auto-detected when omitted); with preference "
                  "data the rejected reply is revised",
        "field_map": "explicit field mapping as in `editalign label`; in addition --field "
                     "response=COLUMN names the response to revise for data that has only a "
                     "prompt and a response; repeatable",
        "strict": "fail on the first unusable input row instead of skipping it"})
    p.add_argument("--api-base", help="OpenAI-compatible endpoint, e.g. "
                   "https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name the endpoint knows")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; "
                   "unset means no Authorization header). The key is never logged or cached.")
    p.add_argument("--template", default="minimal",
                   help="shipped template (minimal, minimal-reference, strict) or a path to "
                   "your own template file (default: %(default)s)")
    p.add_argument("--strict-template", default="strict",
                   help="template for the one retry of a row whose edit ratio is too high "
                   "(with --retry-strict; default: %(default)s)")
    p.add_argument("--retry-strict", action="store_true",
                   help="retry a rewrite (edit ratio above --max-edit-ratio) once with the "
                   "strict template before dropping it")
    p.add_argument("--max-edit-ratio", type=float, default=0.5,
                   help="drop revisions whose word-level normalised edit distance to the "
                   "original exceeds this; 1 keeps everything (default: %(default)s)")
    p.add_argument("--reward-scorer", metavar="MODULE:FUNCTION",
                   help="reward filter: a callable (prompts, responses) -> list[float]; "
                   "keeps rows with score(revised) - score(original) >= --reward-margin")
    p.add_argument("--reward-model",
                   help="reward filter with a reward model directory written by "
                   "`editalign train token-rm|rm`")
    p.add_argument("--reward-margin", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=5,
                   help="retries on 429/5xx/timeouts/garbled answers, with exponential "
                   "back-off and jitter")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="first back-off ceiling in seconds (doubles per retry, capped at 30)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, help="sampling seed sent to the server (if it takes one)")
    p.add_argument("--cache", help="SQLite request cache (default: "
                   "$EDITALIGN_CACHE/revise-requests.sqlite, shared by all runs)")
    p.add_argument("--out", help="output EditPair JSONL (rows kept by the filters)")
    p.add_argument("--dropped", help="JSONL of dropped and failed rows with reasons "
                   "(default: OUT with .dropped.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_callable(spec: str) -> Any:
    module, sep, name = spec.partition(":")
    if not (sep and module and name):
        raise ValueError(f"--reward-scorer {spec!r}: expected MODULE:FUNCTION")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--reward-scorer {spec!r}: {err}") from None
    if not callable(function):
        raise ValueError(f"--reward-scorer {spec!r} is not callable")
    return function


def _claim_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """Before a request is sent: neither output may be an input, the other output, or a
    directory; and one run at a time writes them."""
    from editalign.outputs import check_distinct, check_file, file_lock_path, hold_lock

    out = check_file(args.out, flag="--out", inputs={"--data": args.data, "--cache": args.cache})
    dropped_path = Path(args.dropped) if args.dropped else out.with_name(
        out.name.removesuffix(".jsonl") + ".dropped.jsonl")
    check_file(dropped_path, flag="--dropped", inputs={"--data": args.data, "--cache": args.cache})
    check_distinct({"--out": out, "--dropped": dropped_path, "--cache": args.cache})
    hold_lock(file_lock_path(out), what=f"--out {out}", command="revise")
    return out, dropped_path


def _cache_path(cache: str | None) -> Path:
    """--cache, or the request cache every run shares."""
    if cache:
        return Path(cache)
    from editalign.models import cache_dir

    return cache_dir() / "revise-requests.sqlite"


def run(args: argparse.Namespace) -> int:
    from editalign.data.pairs import load_pairs
    from editalign.llm.cache import RequestCache
    from editalign.llm.client import ChatClient, ClientConfig, FatalRequestError
    from editalign.revise.prompts import load_template
    from editalign.revise.reviser import ReviseOptions, revise_fields, revise_pairs
    from editalign.revise.scorer import reward_model_scorer  # torch: only when it runs

    # httpx logs every request at INFO; the summary says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    missing = [flag for flag, value in (("--data", args.data), ("--api-base", args.api_base),
                                        ("--model", args.model), ("--out", args.out))
               if not value]
    if missing:
        raise SystemExit(f"editalign revise: {', '.join(missing)} required")
    if args.reward_scorer and args.reward_model:
        raise ValueError("give --reward-scorer or --reward-model, not both")
    out, dropped_path = _claim_outputs(args)
    template = load_template(args.template)
    options = ReviseOptions(
        max_edit_ratio=None if args.max_edit_ratio >= 1 else args.max_edit_ratio,
        strict_template=load_template(args.strict_template) if args.retry_strict else None,
        reward_margin=args.reward_margin)
    scorer = (_load_callable(args.reward_scorer) if args.reward_scorer else
              reward_model_scorer(args.reward_model) if args.reward_model else None)
    config = ClientConfig(
        api_base=args.api_base, model=args.model,
        api_key=os.environ.get(args.api_key_env) or None, concurrency=args.concurrency,
        timeout=args.timeout, max_retries=args.max_retries, backoff_base=args.backoff,
        temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)

    pairs, report = load_pairs(args.data, preset=args.preset, fields=revise_fields(args.field),
                               strict=args.strict, split=args.split, limit=args.limit)
    print(report.summary())
    cache_path = _cache_path(args.cache)
    print(f"revising {len(pairs)} rows with {args.model} at {config.url} "
          f"(template {template.name!r}, concurrency {config.concurrency}, cache {cache_path})")
    with RequestCache(cache_path) as cache:
        try:
            result = revise_pairs(pairs, lambda: ChatClient(config, cache), template, options,
                                  scorer=scorer,
                                  progress=not args.no_progress and sys.stderr.isatty(),
                                  sigterm_interrupts=True)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (a scheduler, `kill`)
            print(f"\ninterrupted: {len(cache)} answers are in {cache_path}; rerun the same "
                  "command to resume (cached requests are not sent again)", file=sys.stderr)
            return 130
        except FatalRequestError as err:
            print(f"editalign revise: error: {err}", file=sys.stderr)
            return 2
    from editalign.data.jsonl import write_jsonl

    write_jsonl(out, [p.to_dict() for p in result.kept])
    write_jsonl(dropped_path, [o.record() for o in result.outcomes if o.status != "kept"])
    print(result.summary())
    print(f"wrote {len(result.kept)} pairs to {out}; dropped/failed rows with reasons in "
          f"{dropped_path}")
    return 1 if result.failed else 0
