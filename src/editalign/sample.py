"""``editalign sample``: roll out a policy on a prompt set, the first stage of FIGA's pipeline.

Each prompt gets ``num_samples`` responses; every response becomes one row in the layout
``editalign revise``, ``annotate`` and ``label`` read directly (the ``default`` preset)::

    {"id": "<prompt id>-<j>", "prompt": ..., "original": <sample>, "revised": <sample>,
     "meta": {"sample": {model, prompt_index, sample_index, prompt_id, finish_reason,
                         response_tokens, backend, temperature, top_p, top_k,
                         max_new_tokens, seed, chat_template}}}

``revised`` equals ``original`` until someone (``revise``, ``annotate``) edits it.

Prompts are rendered exactly as the labeller renders them (:func:`editalign.data.labeling.
render_prompt`, through :func:`editalign.generation.encode_prompt`), so the tokens a
sample was drawn after are the tokens it is later labelled and trained after.

Determinism and resuming: the (prompt, sample) rows are cut into fixed chunks of
``batch_size`` rows; chunk ``c`` is sampled after seeding with ``seed + c``. Each finished
row is appended as one JSON line and flushed. A rerun reads back the ids already written
(dropping a torn last line), skips every chunk that is complete and resamples a partial
chunk whole (same rows, same seed, so the same samples on the same hardware), writing only
its missing rows. The file therefore never holds a row twice, and an interrupted run ends,
after its rerun, with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from editalign.generation import SamplingConfig, encode_prompt, sample_responses

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
# Sampling settings stored in every row; a rerun with different ones is refused, because
# it would mix two distributions in one file.
SETTING_KEYS = ("model", "temperature", "top_p", "top_k", "max_new_tokens", "seed",
                "chat_template", "batch_size")


@dataclass
class SampleOptions(SamplingConfig):
    """How to sample: the evaluator's sampling settings (``temperature=0`` is greedy decoding,
    ``top_k=0`` switches top-k off; one meaning and one set of checks for both), plus the
    responses per prompt and the backend."""

    max_new_tokens: int = 256
    num_samples: int = 1
    backend: str = "hf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt != 1:  # the evaluator's name for it; here it is num_samples
            raise ValueError("SampleOptions takes num_samples, not samples_per_prompt")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; allowed: {', '.join(BACKENDS)}")


@dataclass
class Drawn:
    """One sampled response."""

    text: str
    response_tokens: int
    finish_reason: str  # "stop" (EOS came) or "length" (max_new_tokens reached)


# --------------------------------------------------------------------------- the output file


def read_done(path: Path, *, cut: bool = True) -> dict[str, dict[str, Any]]:
    """Rows already in ``path`` by id; a torn last line (no newline, or not JSON) is cut off
    (``cut=False``: left, to look at the file before changing it).

    A line in the middle that is not JSON is not a torn write but a damaged file: refused.
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if good_end < len(data) and cut:
        logger.info("%s: dropping a torn last line (%d bytes)", path, len(data) - good_end)
        with path.open("r+b") as f:
            f.truncate(good_end)
    rows: dict[str, dict[str, Any]] = {}
    lines = data[:good_end].decode("utf-8").split("\n")[:-1]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {n} is not JSON ({err.msg}); this file was not "
                             "written by `editalign sample`, or was damaged: use a new --out"
                             ) from None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}: line {n}: expected a sample row with an 'id'")
        if row["id"] in rows:
            raise ValueError(f"{path}: line {n}: id {row['id']!r} appears twice")
        rows[row["id"]] = row
    return rows


def _check_resumable(path: Path, done: dict[str, dict[str, Any]],
                     expected: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    """Refuse to append to a file written from other prompts or with other settings."""
    for row_id, row in done.items():
        if row_id not in expected:
            raise ValueError(f"{path}: row id {row_id!r} is not one this run would write (other "
                             "prompts, --num-samples or --limit?); use a new --out")
        prompt, settings = expected[row_id]
        if row.get("prompt") != prompt:
            raise ValueError(f"{path}: row {row_id!r} has another prompt than the prompts file "
                             "gives it now; use a new --out")
        written = (row.get("meta") or {}).get("sample") or {}
        for key in SETTING_KEYS:
            if written.get(key) != settings[key]:
                raise ValueError(f"{path}: written with {key}={written.get(key)!r}, this run "
                                 f"has {key}={settings[key]!r}; rerun with the same settings or "
                                 "use a new --out")


# --------------------------------------------------------------------------- backends


class HFBackend:
    """``transformers`` ``generate``, through the evaluator's sampler (same prompt encoding,
    left padding, EOS handling)."""

    name = "hf"

    def __init__(self, model_name: str, options: SampleOptions) -> None:
        import torch

        from editalign.models import load_model, load_tokenizer

        self.options = options
        self.tokenizer = load_tokenizer(model_name)
        self.model = load_model(model_name)
        if torch.cuda.is_available():
            self.model.to("cuda")

    def generate(self, prompts: Sequence[Any], seed: int) -> list[Drawn]:
        # one response per prompt: the caller repeats prompts for k samples and seeds chunks
        config = replace(self.options, seed=seed, batch_size=len(prompts))
        eos = self.tokenizer.eos_token_id
        return [Drawn(s.text, len(s.response_ids),
                      "stop" if s.response_ids and s.response_ids[-1] == eos else "length")
                for s in sample_responses(self.model, self.tokenizer, prompts, config)]


def vllm_unavailable_reason() -> str | None:
    """Why ``--backend vllm`` cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible"
    return None


class VLLMBackend:
    """vLLM's offline ``LLM.generate`` on token-id prompts (encoded by the same
    :func:`encode_prompt` as the HF path, so both backends see the same tokens).

    Each request carries its own seed (``seed`` of the chunk plus its row within it), so a
    row's sample does not depend on what vLLM batches it with. Not exercised by the test
    suite (no GPU there); see docs/loop.md.
    """

    name = "vllm"

    def __init__(self, model_name: str, options: SampleOptions) -> None:
        reason = vllm_unavailable_reason()
        if reason:
            raise ValueError(f"--backend vllm is unavailable: {reason}; use --backend hf")
        from vllm import LLM

        from editalign.models import load_tokenizer, resolve_model_path

        self.options = options
        self.tokenizer = load_tokenizer(model_name)
        self.llm = LLM(model=resolve_model_path(model_name), seed=options.seed)

    def generate(self, prompts: Sequence[Any], seed: int) -> list[Drawn]:
        from vllm import SamplingParams

        o = self.options
        requests = [{"prompt_token_ids": encode_prompt(p, self.tokenizer, o.chat_template)}
                    for p in prompts]
        params = [SamplingParams(n=1, temperature=o.temperature, top_p=o.top_p,
                                 top_k=o.top_k if o.top_k > 0 else -1,
                                 max_tokens=o.max_new_tokens, seed=seed * 100_003 + i,
                                 skip_special_tokens=True)
                  for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        drawn = []
        for output in outputs:
            completion = output.outputs[0]
            drawn.append(Drawn(completion.text, len(completion.token_ids),
                               "length" if completion.finish_reason == "length" else "stop"))
        return drawn


def make_backend(model: str, options: SampleOptions) -> HFBackend | VLLMBackend:
    return VLLMBackend(model, options) if options.backend == "vllm" else HFBackend(model,
                                                                                    options)


# --------------------------------------------------------------------------- sampling


def prompt_ids(source: str | os.PathLike[str], n: int) -> list[str]:
    """The prompts' own ids when a JSONL/JSON prompts file gives every row a unique one,
    else their positions (so sample ids stay stable across reruns either way)."""
    from editalign.eval.winrate import read_prompt_rows

    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        try:
            rows = read_prompt_rows(path)
        except ValueError:
            rows = []
        ids = [row.get("id") for row in rows[:n]]
        if (len(ids) == n and all(isinstance(i, str | int) for i in ids)
                and len({str(i) for i in ids}) == n):
            return [str(i) for i in ids]
    return [str(i) for i in range(n)]


def _chunks(n: int, size: int) -> Iterator[tuple[int, range]]:
    for c, start in enumerate(range(0, n, size)):
        yield c, range(start, min(start + size, n))


def sample_prompts(model: str, prompts: Sequence[Any], out: str | os.PathLike[str],
                   options: SampleOptions, *, ids: Sequence[str] | None = None,
                   progress: bool = False, backend: Any = None) -> dict[str, Any]:
    """Sample ``options.num_samples`` responses per prompt into ``out`` (JSONL), resuming
    from what ``out`` already holds; returns counts and timings."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out = Path(out)
    k = options.num_samples
    ids = list(ids) if ids is not None else [str(i) for i in range(len(prompts))]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
    settings = {"model": model, "backend": options.backend, "temperature": options.temperature,
                "top_p": options.top_p, "top_k": options.top_k,
                "max_new_tokens": options.max_new_tokens, "seed": options.seed,
                "chat_template": options.chat_template, "batch_size": options.batch_size}
    # Row n is sample j = n % k of prompt i = n // k: a prompt's samples stay together.
    row_ids = [f"{ids[n // k]}-{n % k}" for n in range(len(prompts) * k)]
    expected = {rid: (prompts[n // k], settings) for n, rid in enumerate(row_ids)}
    # The file is checked to be this run's before anything in it is touched (a torn line cut).
    _check_resumable(out, read_done(out, cut=False), expected)
    done = read_done(out)
    todo = [(c, rows) for c, rows in _chunks(len(row_ids), options.batch_size)
            if any(row_ids[n] not in done for n in rows)]
    print(f"sample: {len(prompts)} prompts x {k} = {len(row_ids)} rows with {model} "
          f"({options.backend}); {len(done)} already in {out}, {len(todo)} batches to go",
          flush=True)
    written = 0
    if todo:
        backend = backend or make_backend(model, options)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8", newline="\n") as handle, \
                tqdm(total=len(row_ids), initial=len(done), desc="sample", unit="row",
                     disable=not progress) as bar:
            for c, rows in todo:
                drawn = backend.generate([prompts[n // k] for n in rows], options.seed + c)
                for n, sample in zip(rows, drawn, strict=True):
                    if row_ids[n] in done:
                        continue
                    record = {"id": row_ids[n], "prompt": prompts[n // k],
                              "original": sample.text, "revised": sample.text,
                              "meta": {"sample": {**settings, "prompt_index": n // k,
                                                  "prompt_id": ids[n // k],
                                                  "sample_index": n % k,
                                                  "finish_reason": sample.finish_reason,
                                                  "response_tokens": sample.response_tokens}}}
                    # One write per line, then flush: a kill leaves at most a torn last line,
                    # which the rerun cuts off.
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    written += 1
                    bar.update(1)
    seconds = time.perf_counter() - started
    summary = {"rows": len(row_ids), "written": written, "resumed": len(done),
               "seconds": seconds, "out": str(out)}
    print(f"sample: wrote {written} rows ({len(done)} from an earlier run) to {out} "
          f"in {seconds:.1f} s", flush=True)
    return summary
