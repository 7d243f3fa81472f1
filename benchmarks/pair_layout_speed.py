"""Pair layouts: forward+backward time and peak memory per pair, shared vs padded vs packed.

Each step runs B edit pairs through the model and back-propagates the sum of the
response tokens' log-probabilities of both sides (what every pair loss needs):

- ``padded``: 2B rows right-padded to the longest side (``attention_mask`` 2-D);
- ``packed``: the 2B sides in one row, positions restarting per side (padding-free);
- ``shared``: one row per pair ``[shared prefix | original suffix | revised suffix]`` with
  a 4-D mask (:mod:`editalign.batching.shared_prefix`), the prefix computed once.

In every layout the LM head runs only on the scored (response) positions. Pairs are
synthetic token ids with two length profiles: ``qa-feedback`` (prompt ~700 tokens with the
passages, responses ~100, first edit uniformly within the first half of the response)
and ``short`` (SPA-like: prompt ~40, responses ~120). Each (model, profile, layout) runs
in its own process: ``--warmup`` steps, then ``--steps`` timed steps; configurations are
interleaved ``--repeats`` times and the fastest repeat is reported (the machine may be
shared). Peak memory: CUDA max allocated on a GPU, on CPU the sampled peak RSS growth
during the timed steps.

    python benchmarks/pair_layout_speed.py [--models tiny smollm2-135m] [--pairs 4]

Targets (issue 8): shared <= 0.6x padded time on qa-feedback lengths, never slower on
short prompts. Writes results/pair_layout_speed.json (``--name`` to change).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

PROFILES = {
    # name: (prompt mean, prompt sd, response mean, response sd)
    "qa-feedback": (700, 60, 100, 30),
    "short": (40, 15, 120, 40),
    # the GPU suite's QA-Feedback shape (issue 17): 700-token prompts, ~80-token responses
    "qa-feedback-80": (700, 0, 80, 10),
}
LAYOUTS = ("padded", "packed", "shared")


def make_pairs(profile: str, n: int, vocab: int, seed: int) -> list[dict]:
    pm, ps, rm, rs = PROFILES[profile]
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(max(8, int(rng.gauss(pm, ps))))]
        lo = max(4, int(rng.gauss(rm, rs)))
        lr = max(4, lo + rng.randint(-10, 10))
        original = [rng.randrange(3, vocab) for _ in range(lo)]
        first_edit = rng.randint(0, min(lo, lr) // 2)
        revised = original[:first_edit] + [rng.randrange(3, vocab)
                                           for _ in range(lr - first_edit)]
        if first_edit < lr and first_edit < lo and revised[first_edit] == original[first_edit]:
            revised[first_edit] = 3 + (revised[first_edit] - 2) % (vocab - 3)
        pairs.append({"prompt": len(prompt), "original": prompt + original,
                      "revised": prompt + revised})
    return pairs


def step_fn(model, layout: str, pairs: list[dict]):
    """A closure running forward+backward of one batch in ``layout``."""
    import torch

    from editalign.batching.shared_prefix import (
        SUFFIX_ORDER as SIDES,
    )
    from editalign.batching.shared_prefix import (
        build_shared_prefix_batch,
        model_mask,
        uses_flex_attention,
    )

    head = model.get_output_embeddings()
    dev = model.device
    seqs = [p[s] for p in pairs for s in SIDES]
    starts = [p["prompt"] for p in pairs for _ in SIDES]

    def score(hidden_rows, targets):
        logp = head(hidden_rows).float().log_softmax(-1)
        return logp.gather(-1, targets[:, None]).sum()

    if layout == "padded":
        length = max(map(len, seqs))
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        att = torch.zeros(len(seqs), length, dtype=torch.long)
        rows, cols, tgt = [], [], []
        for i, (s, r) in enumerate(zip(seqs, starts, strict=True)):
            ids[i, :len(s)], att[i, :len(s)] = torch.tensor(s), 1
            rows += [i] * (len(s) - r)
            cols += range(r - 1, len(s) - 1)
            tgt += s[r:]
        rows_t, cols_t, tgt_t = (torch.tensor(x, device=dev) for x in (rows, cols, tgt))
        ids, att = ids.to(dev), att.to(dev)

        def run():
            h = model.model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            score(h[rows_t, cols_t], tgt_t).backward()
        return run, int(ids.numel())

    if layout == "packed":
        flat, pos, cols, tgt = [], [], [], []
        for s, r in zip(seqs, starts, strict=True):
            off = len(flat)
            flat += s
            pos += range(len(s))
            cols += range(off + r - 1, off + len(s) - 1)
            tgt += s[r:]
        ids, pos_t = torch.tensor([flat], device=dev), torch.tensor([pos], device=dev)
        cols_t, tgt_t = torch.tensor(cols, device=dev), torch.tensor(tgt, device=dev)

        def run():
            h = model.model(input_ids=ids, position_ids=pos_t, use_cache=False).last_hidden_state
            score(h[0, cols_t], tgt_t).backward()
        return run, len(flat)

    batch = build_shared_prefix_batch([(p["original"], p["revised"]) for p in pairs],
                                      dense_mask=not uses_flex_attention(model))
    index, tgt = [], []
    for name in SIDES:
        resp = batch.valid[name].clone()
        for i, p in enumerate(pairs):
            resp[i, :p["prompt"] - 1] = False
        index.append((torch.nonzero(resp, as_tuple=True)[0].to(dev),
                      batch.source[name][resp].to(dev)))
        tgt.append(batch.target[name][resp])
    tgt_t = torch.cat(tgt).to(dev)
    input_ids, position_ids = batch.input_ids.to(dev), batch.position_ids.to(dev)

    def run():
        # built per step, as the trainers do (a BlockMask on the device for flex_attention)
        mask = model_mask(model, batch)
        h = model.model(input_ids=input_ids, attention_mask=mask,
                        position_ids=position_ids, use_cache=False).last_hidden_state
        sel = torch.cat([h[b_idx, src] for b_idx, src in index])
        score(sel, tgt_t).backward()
    return run, int(batch.input_ids.numel())


def worker(spec: dict) -> dict:
    import torch

    from editalign.models import load_model
    from train_speed import _Peak

    torch.manual_seed(0)
    model = load_model(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    pairs = make_pairs(spec["profile"], spec["pairs"] * (spec["warmup"] + spec["steps"]),
                       model.config.vocab_size, seed=0)
    batches = [pairs[i:i + spec["pairs"]] for i in range(0, len(pairs), spec["pairs"])]
    runs = [step_fn(model, spec["layout"], b) for b in batches]
    for run, _ in runs[:spec["warmup"]]:
        run()
        model.zero_grad(set_to_none=True)
    peak = _Peak()
    peak.start()
    t0 = time.perf_counter()
    for run, _ in runs[spec["warmup"]:]:
        run()
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    n_pairs = spec["pairs"] * spec["steps"]
    return {"seconds_per_pair": seconds / n_pairs,
            "peak_bytes_per_pair": peak.stop() / spec["pairs"],
            "input_positions_per_pair": sum(n for _, n in runs[spec["warmup"]:]) / n_pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny"])
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--pairs", type=int, default=4, help="pairs per batch")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="pair_layout_speed", help="result file name")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for model in args.models:
            for profile in args.profiles:
                for layout in args.layouts:
                    spec = {"model": model, "profile": profile, "layout": layout,
                            "pairs": args.pairs, "warmup": args.warmup, "steps": args.steps}
                    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                         check=True, capture_output=True, text=True)
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    key = f"{model}/{profile}/{layout}"
                    best = results.get(key)
                    if best is None:
                        results[key] = {**spec, **res}
                    else:
                        best["seconds_per_pair"] = min(best["seconds_per_pair"],
                                                       res["seconds_per_pair"])
                        best["peak_bytes_per_pair"] = min(best["peak_bytes_per_pair"],
                                                          res["peak_bytes_per_pair"])
                    print(key, res, flush=True)
    ratios = {}
    for model in args.models:
        for profile in args.profiles:
            base = results.get(f"{model}/{profile}/padded")
            for layout in args.layouts:
                r = results.get(f"{model}/{profile}/{layout}")
                if base and r:
                    ratios[f"{model}/{profile}/{layout}"] = {
                        "time_vs_padded": r["seconds_per_pair"] / base["seconds_per_pair"],
                        "peak_vs_padded": (r["peak_bytes_per_pair"] / base["peak_bytes_per_pair"]
                                           if base["peak_bytes_per_pair"] > 0 else None)}
    for k, v in ratios.items():
        print(k, {n: round(x, 3) if x is not None else None for n, x in v.items()})
    write_result(args.name, {"settings": vars(args) | {"worker": None},
                                       "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
