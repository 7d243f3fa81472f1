"""One tiny round of ``editalign loop`` with a real ``transformers serve`` as the reviser
(and as the win-rate judge), killed mid-revise and resumed.

Reuses the server fixture of test_revise_server.py (SmolLM2-135M-Instruct on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_revise_server import (
    _cached,
    _wait_for_cache,
    server,  # noqa: F401  (the module-scoped fixture)
)
from test_revise_server import pytestmark as server_marks

pytestmark = [*server_marks, pytest.mark.slow]  # a server, two loop processes: ~1-2 min

PROMPTS = ["Name a fruit.", "What is 2 + 2?", "Say hello.", "Name a colour.", "Count to 3."]
# SmolLM2-135M asked to fix the tiny policy's random bytes with the shipped template rambles
# past any small token limit, and the completion filter drops every truncated answer; asked
# for a short answer with the draft beside it, it stops, so the round has pairs to train on.
TEMPLATE = """[system]
You are a helpful assistant. Answer in at most five words.
[user]
{{prompt}}
(A draft answer, which may be wrong: {{response}})
"""


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _loop(config: Path) -> list[str]:
    return [sys.executable, "-m", "editalign.cli", "loop", "--config", str(config)]


def test_loop_round_with_real_server_killed_mid_revise_resumes_without_loss(server,  # noqa: F811
                                                                           tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    out = tmp_path / "loop"
    template = tmp_path / "short.txt"
    template.write_text(TEMPLATE)
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(out), "rounds": 1, "policy": "tiny", "prompts": str(prompts),
        "sample": {"num_samples": 1, "max_new_tokens": 6},
        "revise": {"reviser": "api", "api_base": server.base, "model": server.model,
                   "template": str(template), "max_tokens": 32, "max_edit_ratio": 1.0,
                   "concurrency": 1, "timeout": 600, "backoff": 0.05},
        "train": {"method": "figa", "args": {"max_steps": 1,
                                             "per_device_train_batch_size": 2}},
        "eval": {"judge": f"api:{server.base}", "judge_model": server.model, "limit": 2,
                 "samples_per_prompt": 1, "max_new_tokens": 4},
    }))
    cache = out / "revise-cache.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so that the kill takes the loop and anything it started
    proc = subprocess.Popen(_loop(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        _wait_for_cache(cache, proc, 1)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-revise: no marker, no revised.jsonl yet
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    cached_before = _cached(cache)
    assert 1 <= cached_before < len(PROMPTS)
    assert (out / "round1" / "sample.done").is_file()
    assert not (out / "round1" / "revise.done").exists()
    samples_before = (out / "round1" / "sample.jsonl").read_text()

    done = subprocess.run(_loop(config), capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 1 sample: done earlier, skipped" in done.stdout
    # the rerun paid only for the rows the killed run had not got back
    summaries = re.findall(r"requests sent (\d+), answered from cache (\d+)",
                           (out / "round1" / "revise.log").read_text())
    assert summaries[-1] == (str(len(PROMPTS) - cached_before), str(cached_before)), \
        (out / "round1" / "revise.log").read_text()
    assert _cached(cache) == len(PROMPTS)

    samples = _read(out / "round1" / "sample.jsonl")
    assert (out / "round1" / "sample.jsonl").read_text() == samples_before
    kept = _read(out / "round1" / "revised.jsonl")
    dropped = _read(out / "round1" / "revised.dropped.jsonl")
    ids = [r["id"] for r in kept + dropped]
    # every sample is accounted for exactly once: none lost, none duplicated
    assert sorted(ids) == sorted(r["id"] for r in samples) == [f"q{i}-0" for i in
                                                               range(len(PROMPTS))]
    assert not [r for r in dropped if r["status"] == "failed"]
    for row in kept:
        assert row["meta"]["revise"]["model"] == server.model
        assert row["meta"]["sample"]["model"] == "tiny"
    pairs = _read(out / "round1" / "pairs.jsonl")
    assert pairs and pairs == [r for r in kept if r["original"] != r["revised"]]
    assert (out / "round1" / "policy" / "config.json").is_file()
    result = json.loads((out / "round1" / "winrate.json").read_text())
    assert result["judge"] == f"api:{server.base}" and result["n"] == 2
    table = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["round"] for r in table] == [1] and table[0]["win_rate"] == result["win_rate"]
