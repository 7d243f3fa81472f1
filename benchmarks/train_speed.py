"""Training throughput and peak memory: FIGA vs TRL's SFTTrainer, padded vs padding-free.

Both trainers process the *same sequences* per step: a FIGA batch of B pairs is 2B
sequences (revised + original); the SFT batch is those same 2B sequences as SFT examples.
So tokens per batch are equal, and tokens/s counts both sides of every pair. Pairs are the
QA-Feedback human edits with question-only prompts (their real response-length spread);
the order is shuffled once and shared. Each configuration runs in its own process:
``--warmup`` steps, then ``--steps`` timed steps of the full Trainer loop (collation,
forward, backward, optimiser); configurations are interleaved ``--repeats`` times and the
fastest repeat is reported (the machine may be shared). Peak memory is CUDA's max
allocated on a GPU, and on CPU the peak resident-set growth from the start of training
(sampled every 2 ms; the smallest over repeats), both measured over all steps.

Also checks that padding-free FIGA (one packed row, positions restarting per sequence)
gives the padded loss on the same batch.

    python benchmarks/train_speed.py [--models tiny smollm2-135m] [--pairs 4] [--steps 5]

Targets (issue 3): FIGA >= 0.95x SFT tokens/s and <= 1.1x its peak memory; padding-free
FIGA >= 1.3x padded tokens/s with identical loss. Writes results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa-feedback" / "feedback.json"


def load_features(model: str, max_length: int, n: int):
    from editalign.batching.lm import pair_features
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.pairs import load_pairs
    from editalign.models import load_tokenizer

    tok = load_tokenizer(model)
    pairs, _ = load_pairs(str(DATA), preset="qa-feedback")
    for p in pairs:
        p.prompt = p.prompt.split("\n\nPassages:")[0]
    labeled, _ = label_pairs(pairs, tok, LabelingConfig(max_length=max_length))
    random.Random(0).shuffle(labeled)
    features, _ = pair_features(labeled[:n])
    return tok, labeled[:n], features


class _Peak:
    """Peak memory over a region: CUDA allocator stats, or sampled RSS growth on CPU."""

    def __init__(self) -> None:
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        self._stop.set()
        self.thread.join()
        return self.peak - self.base


def worker(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    from editalign.models import load_model

    torch.manual_seed(0)
    tok, _, features = load_features(spec["model"], spec["max_length"],
                                           spec["pairs"] * (spec["warmup"] + spec["steps"]))
    batch_pairs = spec["pairs"]
    counts: list[int] = []
    peak = _Peak()
    times: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            peak.start()  # from the first step: activations, gradients, optimiser state

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == spec["warmup"]:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == spec["warmup"] + spec["steps"]:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times["end"] = time.perf_counter()
                times["peak"] = peak.stop()

    common = {"output_dir": tempfile.mkdtemp(), "report_to": "none", "save_strategy": "no",
              "max_steps": spec["warmup"] + spec["steps"], "disable_tqdm": True,
              "logging_steps": 1000, "learning_rate": 1e-5, "seed": 0,
              "use_cpu": not torch.cuda.is_available(), "gradient_checkpointing": False,
              "bf16": False, "dataloader_drop_last": True}
    model = load_model(spec["model"])
    if spec["method"] == "figa":
        from torch.utils.data import SequentialSampler

        from editalign.train.figa import FIGAConfig, FIGATrainer

        args = FIGAConfig(per_device_train_batch_size=batch_pairs,
                          padding_free=spec["padding_free"], **common)
        trainer = FIGATrainer(model=model, args=args, train_dataset=features,
                              processing_class=tok)
        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(features)
        inner = trainer.data_collator

        def collate(batch):
            counts.append(sum(len(f["revised_input_ids"]) + len(f["original_input_ids"])
                              for f in batch))
            return inner(batch)
    else:
        import datasets
        from torch.utils.data import SequentialSampler
        from trl import SFTConfig, SFTTrainer

        dataset = datasets.Dataset.from_dict(sft_rows(features, batch_pairs))
        args = SFTConfig(per_device_train_batch_size=2 * batch_pairs, max_length=None,
                         lr_scheduler_type="constant", **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tok)
        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)
        inner = trainer.data_collator

        def collate(batch):
            counts.append(sum(len(f["input_ids"]) for f in batch))
            return inner(batch)
    trainer.data_collator = collate
    trainer.add_callback(Clock())
    trainer.train()
    tokens = sum(counts[spec["warmup"]: spec["warmup"] + spec["steps"]])
    seconds = times["end"] - times["start"]
    result = {**spec, "tokens": tokens, "seconds": round(seconds, 3),
              "tokens_per_s": round(tokens / seconds, 1),
              "peak_memory_mb": round(times["peak"] / 2**20, 1)}
    if spec["method"] == "figa" and spec["padding_free"]:
        result["loss_check"] = padded_vs_packed_loss(trainer, features[:batch_pairs])
    return result


def sft_rows(features: list[dict], batch_pairs: int) -> dict[str, list]:
    """The SFT examples of the FIGA batches' sequences, in the same order (a FIGA batch of B
    pairs = its B revised then B original sides): ``input_ids`` and ``labels`` (-100 on the
    prompt)."""
    from editalign.data.align import IGNORE

    rows: dict[str, list] = {"input_ids": [], "labels": []}
    for k in range(0, len(features), batch_pairs):
        for side in ("revised", "original"):
            for f in features[k:k + batch_pairs]:
                ids, labels = f[f"{side}_input_ids"], f[f"{side}_labels"]
                rows["input_ids"].append(ids)
                rows["labels"].append([t if lab != IGNORE else IGNORE
                                       for t, lab in zip(ids, labels, strict=True)])
    return rows


def padded_vs_packed_loss(trainer, features) -> dict:
    import torch

    from editalign.batching.lm import PairCollator

    t = trainer.processing_class
    losses = {}
    for packed in (False, True):
        collate = PairCollator(pad_token_id=t.pad_token_id, eos_token_id=t.eos_token_id,
                               alpha=trainer.args.alpha, beta=trainer.args.beta,
                               gamma=trainer.args.gamma, padding_free=packed)
        batch = {k: v.to(trainer.args.device) for k, v in collate(features).items()}
        with torch.no_grad():
            losses["packed" if packed else "padded"] = trainer.compute_loss(trainer.model,
                                                                            batch).item()
    losses["abs_diff"] = abs(losses["packed"] - losses["padded"])
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per FIGA batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per configuration, interleaved; the fastest is reported")
    parser.add_argument("--name", default="train_speed", help="result file name")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    from _common import write_result

    runs, all_runs = [], []
    for model in args.models:
        best: dict[tuple, dict] = {}
        for _ in range(args.repeats):  # configurations interleaved; the best repeat counts
            for method, padding_free in (("sft", False), ("figa", False), ("figa", True)):
                spec = {"model": model, "method": method, "padding_free": padding_free,
                        "pairs": args.pairs, "steps": args.steps, "warmup": args.warmup,
                        "max_length": args.max_length}
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                     capture_output=True, text=True, env=os.environ.copy())
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")),
                            None)
                if line is None:
                    raise RuntimeError(f"{spec} failed:\n{out.stderr[-3000:]}")
                run = json.loads(line[len("RESULT "):])
                all_runs.append(run)
                key = (method, padding_free)
                if key not in best or run["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = {**run, "peak_memory_mb": min(
                        run["peak_memory_mb"], best.get(key, run)["peak_memory_mb"])}
                print(json.dumps({k: run[k] for k in ("model", "method", "padding_free",
                                                      "tokens_per_s", "peak_memory_mb")}),
                      flush=True)
        runs += best.values()
    summary = {}
    for model in args.models:
        by = {(r["method"], r["padding_free"]): r for r in runs if r["model"] == model}
        sft, figa, packed = by["sft", False], by["figa", False], by["figa", True]
        summary[model] = {
            "figa_vs_sft_tokens_per_s": round(figa["tokens_per_s"] / sft["tokens_per_s"], 3),
            "figa_vs_sft_peak_memory": round(figa["peak_memory_mb"]
                                             / max(sft["peak_memory_mb"], 1e-9), 3),
            "padding_free_vs_padded_tokens_per_s": round(
                packed["tokens_per_s"] / figa["tokens_per_s"], 3),
            "padding_free_loss_abs_diff": packed["loss_check"]["abs_diff"],
        }
    print(json.dumps(summary, indent=2))
    write_result(args.name, {
        "targets": {"figa_vs_sft_tokens_per_s": ">= 0.95", "figa_vs_sft_peak_memory": "<= 1.1",
                    "padding_free_vs_padded_tokens_per_s": ">= 1.3",
                    "padding_free_loss_abs_diff": "~0 (float rounding)"},
        "note": "CPU timings on a shared 2-core machine are noisy; see docs/figa.md",
        "repeats": args.repeats, "summary": summary, "best_runs": runs, "all_runs": all_runs})


if __name__ == "__main__":
    main()
