"""Dense GRPO on 2 CPU processes (torchrun, gloo): a group whose completions sit on both ranks
gets the advantages and the first update of 1 process on the same global batch.

Rollouts come from a deterministic ``rollout_func`` (TRL's hook for custom generation): each
completion is a function of its index in the global batch, so both runs train on the same
completions; what is under test is the gather behind the per-token normalisation (ranks
with different response widths) and TRL's update, not sampling.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editalign.models import load_model, load_tokenizer
from editalign.reward_sources import ResponseScores

GLOBAL_BATCH = 4  # one prompt, G = 4 completions: 2 on each rank in the 2-process run
G = 4


class PositionSource:
    """Token reward = the token id mod 5 (varies along the response); outcome = their sum."""

    name = "position"
    dense = True

    def score(self, input_ids, attention_mask, response_start):
        lengths = attention_mask.sum(-1) - response_start
        width = int(lengths.max())
        cols = torch.arange(width)
        mask = cols[None, :] < lengths[:, None]
        index = (response_start[:, None] + cols).clamp(max=input_ids.shape[1] - 1)
        tokens = torch.where(mask, (input_ids.gather(1, index) % 5).float(), 0.0)
        return ResponseScores(sequence=tokens.sum(-1), tokens=tokens, lengths=lengths)


def run(out: Path, per_device: int) -> dict:
    from datasets import Dataset

    from editalign.train.grpo import DenseGRPOConfig, DenseGRPOTrainer

    tok = load_tokenizer("tiny")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    seen: list = []

    def rollout(prompts, trainer):
        rank = trainer.accelerator.process_index
        prompt_ids = [tok(p)["input_ids"] for p in prompts]
        completions = []
        for i in range(len(prompts)):
            k = rank * len(prompts) + i  # index in the global batch
            completions.append([(7 * k + 3 * j) % 40 + 10 for j in range(2 + 3 * k)])
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    args = DenseGRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, report_to="none",
                           ddp_backend="gloo" if distributed else None,
                           per_device_train_batch_size=per_device, num_generations=G,
                           max_completion_length=16, max_steps=1, optim="sgd",
                           learning_rate=1.0, save_strategy="no", disable_tqdm=True, seed=0,
                           logging_steps=1, token_coef=0.5, token_term="reward_to_go")
    trainer = DenseGRPOTrainer(load_model("tiny"), None, args, reward_source=PositionSource(),
                               train_dataset=Dataset.from_dict({"prompt": ["Q: colour?"]}),
                               processing_class=tok, rollout_func=rollout)
    original = trainer._generate_and_score_completions

    def keep(inputs):
        output = original(inputs)
        seen.append(output["advantages"].tolist())
        return output

    trainer._generate_and_score_completions = keep
    trainer.train()
    from accelerate.utils import gather_object

    advantages = gather_object(seen[0])  # rank 0's rows, then rank 1's
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    state = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    return {"loss": loss, "world_size": args.world_size, "state": state,
            "advantages": advantages}


@pytest.mark.skipif(shutil.which("torchrun") is None and not
                    (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRPO_DDP_OUT": str(tmp_path / "ddp.json")}
    proc = subprocess.run(
        [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node",
         "2", __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    single = run(tmp_path / "single", per_device=GLOBAL_BATCH)
    assert ddp["world_size"] == 2 and single["world_size"] == 1

    # Each rank pads to its own width: compare the response tokens.
    lengths = [2 + 3 * k for k in range(GLOBAL_BATCH)]
    for k, n in enumerate(lengths):
        assert ddp["advantages"][k][:n] == pytest.approx(single["advantages"][k][:n], abs=1e-5)
    # Per token: the advantages vary along a response (the token term is there).
    assert max(single["advantages"][3][:lengths[3]]) - min(single["advantages"][3][:lengths[3]]) \
        > 1e-2
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-7)
    diff = max((torch.tensor(ddp["state"][k]) - torch.tensor(v)).abs().max().item()
               for k, v in single["state"].items())
    assert diff < 1e-5
    initial = load_model("tiny").state_dict()
    moved = max((torch.tensor(v) - initial[k]).abs().max().item()
                for k, v in single["state"].items())
    assert moved > 1e-4


if __name__ == "__main__":
    result = run(Path(os.environ["GRPO_DDP_OUT"]).parent / "ddp-out",
                 per_device=GLOBAL_BATCH // int(os.environ["WORLD_SIZE"]))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(os.environ["GRPO_DDP_OUT"]).write_text(json.dumps(result))
