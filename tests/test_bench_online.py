"""The benchmark's online arms: same optimizer steps and revised samples as one round."""

from __future__ import annotations

import json

import pytest

from editalign.bench.online import ONLINE_ROUNDS, round_steps
from editalign.cli import main


def test_round_steps_split_the_budget():
    assert round_steps(100, 3) == [34, 33, 33]
    assert round_steps(4, 3) == [2, 1, 1]
    assert sum(round_steps(7, 3)) == 7


@pytest.mark.slow  # bench init + 4 trainings + evaluation: ~30-100 s on 2 busy cores
def test_online_arm_same_budget_resumes_and_is_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    bench, run = tmp_path / "bench", tmp_path / "run"
    assert main(["bench", "init", "--smoke", "--out", str(bench)]) == 0
    argv = ["bench", "run", "--bench", str(bench), "--out", str(run), "--methods",
            "figa,figa-online", "--max-steps", "4", "--run-batch-size", "4", "--eval-limit",
            "4", "--eval-max-new-tokens", "8", "--eval-samples-per-prompt", "1"]
    assert main(argv) == 0
    rounds = [json.loads((run / "figa-online" / f"round{r}" / "done.json").read_text())
              for r in range(1, ONLINE_ROUNDS + 1)]
    assert [r["steps"] for r in rounds] == [2, 1, 1]  # the one-round arm's 4 steps
    n_pairs = len((bench / "pairs.train.jsonl").read_text().splitlines())
    assert sum(r["samples"] for r in rounds) == n_pairs  # as many revised samples
    for r in range(1, ONLINE_ROUNDS + 1):
        state = json.loads((run / "figa-online" / f"round{r}" / "policy" /
                            "trainer_state.json").read_text())
        assert state["global_step"] == rounds[r - 1]["steps"]
    # each arm at its own tuned learning rate (the online arm's schedule restarts per round)
    import torch

    from editalign.bench.tuned import TUNED

    def lr(path):
        return torch.load(path / "training_args.bin", weights_only=False).learning_rate

    rates = TUNED["facts"].learning_rates
    assert lr(run / "figa") == rates["figa"]
    assert lr(run / "figa-online" / "round2" / "policy") == rates["figa-online"]
    assert rates["figa-online"] != rates["figa"]
    results = json.loads((run / "results.json").read_text())
    assert [r["method"] for r in results["results"]] == ["figa", "figa-online"]
    online = results["results"][1]
    assert online["policy"] == str(run / "figa-online" / f"round{ONLINE_ROUNDS}" / "policy")
    assert [(c["a"], c["b"]) for c in results["comparisons"]] == [("figa-online", "figa")]
    # a rerun resumes: nothing is trained again and the entry is the same
    assert main(argv) == 0
    again = json.loads((run / "results.json").read_text())["results"][1]
    assert again == online
