"""editalign under verl's pins (transformers < 5.11 here, 5.23 in editalign's main lock): its
token reward model trains, loads and scores in this venv, and one saved by the main venv
loads here and scores the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version

from editalign.reward_model import TokenRewardModel

REPO = Path(__file__).resolve().parents[2]
IDS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 0, 0, 0]]
MASK = [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
START = [3, 2]


def test_token_rm_trains_loads_and_scores_under_verls_transformers(tmp_path):
    assert Version(transformers.__version__) < Version("5.11")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({
        "prompt": f"Say something {i}.", "original": "The cat sat on the mat today.",
        "revised": "The dog sat on the mat today.", "id": f"r{i}"}) + "\n" for i in range(8)))
    env = {**os.environ, "EDITALIGN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "editalign.cli", "train", "token-rm", "--model",
                          "tiny", "--data", str(pairs), "--output_dir", str(tmp_path / "rm"),
                          "--max_steps", "2", "--per_device_train_batch_size", "4",
                          "--report_to", "none"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    model = TokenRewardModel.from_pretrained(tmp_path / "rm",
                                             tokenizer=TokenRewardModel.load_tokenizer(tmp_path / "rm"))
    rewards = model.response_rewards(torch.tensor(IDS), torch.tensor(MASK), START)
    assert rewards.shape == (2, 4)
    assert torch.isfinite(rewards).all()
    assert torch.all(rewards[0] != 0) and torch.all(rewards[1, :2] != 0)
    assert torch.equal(rewards[1, 2:], torch.zeros(2))  # row 1's response has 2 tokens


SAVE_IN_MAIN_VENV = textwrap.dedent("""
    import json, sys, torch, transformers
    from editalign.models import build_tiny_model, tokenizer_fingerprint
    from editalign.reward_model import RewardModelConfig, TokenRewardModel

    out, ids, mask, start = sys.argv[1], *map(json.loads, sys.argv[2:5])
    model, tokenizer = build_tiny_model(3)
    rm = TokenRewardModel(model.model, RewardModelConfig(
        transform="sigmoid", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer)))
    rm.save_pretrained(out, tokenizer=tokenizer)
    rewards = rm.eval().response_rewards(torch.tensor(ids), torch.tensor(mask), start)
    print(json.dumps({"transformers": transformers.__version__, "rewards": rewards.tolist()}))
""")


def main_venv_python() -> str | None:
    python = os.environ.get("EDITALIGN_MAIN_PYTHON", str(REPO / ".venv" / "bin" / "python"))
    return python if Path(python).is_file() else None


@pytest.mark.skipif(main_venv_python() is None,
                    reason="editalign's main venv not found (.venv, or EDITALIGN_MAIN_PYTHON)")
def test_reward_model_saved_by_the_main_venv_scores_the_same_here(tmp_path):
    run = subprocess.run([main_venv_python(), "-c", SAVE_IN_MAIN_VENV, str(tmp_path / "rm"),
                          json.dumps(IDS), json.dumps(MASK), json.dumps(START)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads(run.stdout.strip().splitlines()[-1])
    assert saved["transformers"] != transformers.__version__  # two stacks, really
    model = TokenRewardModel.from_pretrained(tmp_path / "rm",
                                             tokenizer=TokenRewardModel.load_tokenizer(tmp_path / "rm"))
    rewards = model.response_rewards(torch.tensor(IDS), torch.tensor(MASK), START)
    torch.testing.assert_close(rewards, torch.tensor(saved["rewards"]), rtol=1e-5, atol=1e-6)
