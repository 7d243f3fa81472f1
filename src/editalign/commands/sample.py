"""``editalign sample``: roll out a policy on a prompt set (see :mod:`editalign.sample`)."""

from __future__ import annotations

import argparse
import sys

from editalign.commands.common import add_config_argument
from editalign.data.prompts import CHAT_TEMPLATE_MODES
from editalign.sample import (
    BACKENDS,
    SampleOptions,
    prompt_ids,
    sample_prompts,
    vllm_unavailable_reason,
)

NAME = "sample"
HELP = ("sample a policy on prompts (k responses each) into rows that revise, annotate and "
        "label read; resumable")
DESCRIPTION = ("Roll out a policy: k samples per prompt, written row by row (a rerun resumes); "
               "see docs/loop.md.")



def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--model", help="the policy: a registered name (smollm2-135m, tiny), a "
                   "local directory or a cached HF id")
    p.add_argument("--prompts", help="prompts: rows with a 'prompt' (text or chat messages) "
                   "in any format `editalign label` reads, or edit pairs (their prompts)")
    p.add_argument("--prompt-field", default="prompt",
                   help="column holding the prompt (dotted paths work; default: %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--out", help="output JSONL (appended to and resumed when it exists)")
    p.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16,
                   help="rows per generate call (also the unit of resuming)")
    p.add_argument("--chat-template", choices=CHAT_TEMPLATE_MODES, default="auto",
                   help="prompt rendering, as in `editalign label` (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="hf",
                   help="hf: transformers generate; vllm: vLLM's LLM.generate (needs vLLM "
                   "and a CUDA GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from editalign.data.pairs import load_prompts

    missing = [flag for flag, value in (("--model", args.model), ("--prompts", args.prompts),
                                        ("--out", args.out)) if not value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required")
    from editalign.outputs import check_file, file_lock_path, hold_lock

    # Before the model loads: --out is a file that is no input, and one run writes it.
    out = check_file(args.out, flag="--out", inputs={"--prompts": args.prompts,
                                                     "--model": args.model})
    hold_lock(file_lock_path(out), what=f"--out {out}", command="sample")
    options = SampleOptions(num_samples=args.num_samples, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, seed=args.seed,
                            batch_size=args.batch_size, chat_template=args.chat_template,
                            backend=args.backend)
    if options.backend == "vllm" and (reason := vllm_unavailable_reason()):
        raise ValueError(f"--backend vllm is unavailable: {reason}; use --backend hf")
    prompts = load_prompts(args.prompts, field=args.prompt_field, limit=args.limit)
    if not prompts:
        raise ValueError(f"{args.prompts}: no prompts")
    ids = prompt_ids(args.prompts, len(prompts))
    sample_prompts(args.model, prompts, args.out, options, ids=ids,
                   progress=not args.no_progress and sys.stderr.isatty())
    return 0
