"""How well the grounded task's initial policy reads the card, per SFT/task setting.

Builds the grounded task at the given sizes, fine-tunes a freshly initialised
``tiny-bench-grounded`` architecture (``--layers``/``--hidden``) on its noisy SFT data exactly
as ``bench init`` does (:func:`editalign.bench.task.train_initial_policy`), then samples it
(temperature 1, 64 new tokens, seed 0) on the held-out prompts (each twice, at most 168
samples) and on 84 training prompts, and reports the gold judge's view (right attributes,
wrong mentions per response) and the reviser's edit kinds per response (where the wrong
values came from). Appends one row to ``benchmarks/results/bench_grounded_init.json``.
This is the sweep behind the grounded task's defaults (``TASK_DEFAULTS`` in
``editalign.commands.bench``); ``bench init --task grounded``'s ``summary.json`` measures
the chosen setting the same way (one sample per held-out prompt).

    python benchmarks/bench_grounded_init.py --name base1000 --steps 1000
    python benchmarks/bench_grounded_init.py --name ent400_s4000 --people 400 --animals 32 \\
        --about 4 --questions 2 --rpp 1 --test-fraction 0.03 --steps 4000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from editalign.bench.reviser import revise
from editalign.bench.task import BenchTask, PolicySFTConfig, judge_summary, train_initial_policy
from editalign.bench.tokenizer import build_bench_model
from editalign.bench.world import BenchConfig
from editalign.generation import SamplingConfig, sample_responses
from editalign.models import load_model, load_tokenizer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="bench-grounded-init", help="models go to OUT/NAME")
    p.add_argument("--people", type=int, default=40)
    p.add_argument("--animals", type=int, default=20)
    p.add_argument("--about", type=int, default=2, help="about_prompts_per_entity")
    p.add_argument("--questions", type=int, default=1, help="questions_per_attribute")
    p.add_argument("--rpp", type=int, default=4, help="responses_per_prompt")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = BenchConfig(task="grounded", num_people=a.people, num_animals=a.animals,
                      about_prompts_per_entity=a.about, questions_per_attribute=a.questions,
                      responses_per_prompt=a.rpp, test_fraction=a.test_fraction)
    task = BenchTask.build(cfg)
    rows = task.noisy_sft_rows()
    out = Path(a.out) / a.name
    model, tok = build_bench_model(0, hidden_size=a.hidden, num_layers=a.layers, task="grounded")
    model.save_pretrained(out / "init")
    tok.save_pretrained(out / "init")
    sft = PolicySFTConfig(steps=a.steps, learning_rate=a.lr, batch_size=a.bs,
                          warmup_steps=a.warmup, log_every=250)
    log = train_initial_policy(rows, str(out / "init"), out / "policy", config=sft)
    t_train = time.perf_counter() - t0
    policy, tokenizer = load_model(str(out / "policy")), load_tokenizer(str(out / "policy"))
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, seed=0, batch_size=32)
    res = {"args": vars(a), "n_train_prompts": len(task.split("train")),
           "n_test": len(task.split("test")), "n_rows": len(rows),
           "loss": [entry["loss"] for entry in log], "train_seconds": t_train}
    for split in ("test", "train"):
        r = task.rows(split)
        r = r[:: max(1, len(r) // 84)][:84] if split == "train" else (r * 2)[:168]
        texts = [s.text for s in sample_responses(policy, tokenizer, [x["prompt"] for x in r],
                                                  sampling)]
        s = judge_summary(texts, [x["bench"] for x in r])
        kinds = Counter(e.kind for t, x in zip(texts, r, strict=True)
                        for e in revise(t, x["bench"]).edits)
        s["edit_kinds_per_resp"] = {k: v / len(r) for k, v in kinds.items()}
        res[split] = s
    res["seconds"] = time.perf_counter() - t0
    res["command"] = " ".join(["python", "benchmarks/bench_grounded_init.py", *sys.argv[1:]])
    res["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()}
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    path = RESULTS / "bench_grounded_init.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in runs if r["args"]["name"] != a.name] + [res]
    path.write_text(json.dumps({
        "what": "grounded task's initial policy per setting: share of asked attributes right "
                "and wrong mentions per response on held-out (unseen-entity) and training "
                "prompts, edit kinds per response (benchmarks/bench_grounded_init.py)",
        "runs": runs}, indent=1) + "\n")
    print(json.dumps({"name": a.name, "train_seconds": round(t_train),
                      **{sp: {k: v for k, v in res[sp].items() if k != "n"}
                         for sp in ("test", "train")}}))


if __name__ == "__main__":
    main()
