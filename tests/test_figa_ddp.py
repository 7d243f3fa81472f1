"""Data-parallel FIGA: 2 CPU processes (torchrun, gloo) give the loss and update of 1 process
on the same global batch.

The test runs this file under ``torchrun --nproc_per_node 2``; ``accelerate launch --cpu
--num_processes 2`` would silently start only one process on this machine.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editalign.data.labeling import label_pairs
from editalign.data.pairs import EditPair
from editalign.models import load_model, load_tokenizer
from editalign.train.figa import FIGAConfig, FIGATrainer

GLOBAL_BATCH = 4


def run(out: Path, per_device: int) -> dict:
    tok = load_tokenizer("tiny")
    edits = [EditPair(prompt=f"Q{i}: colour of item {i}?" + " Please." * i,
                      original=f"Item {i} is red, I think" + " really" * i + ".",
                      revised=f"Item {i} is BLUE.", id=str(i)) for i in range(GLOBAL_BATCH)]
    pairs, _ = label_pairs(edits, tok)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = FIGAConfig(output_dir=str(out), use_cpu=True, report_to="none",
                      ddp_backend="gloo" if distributed else None,
                      per_device_train_batch_size=per_device, max_steps=1, optim="sgd",
                      learning_rate=1.0, beta=0.5, gamma=0.2, tau=5.5, save_strategy="no",
                      disable_tqdm=True, seed=0, logging_steps=1)
    trainer = FIGATrainer(model=load_model("tiny"), args=args, train_dataset=pairs,
                          processing_class=tok)
    trainer.train()
    # The logged loss is gathered over ranks (train()'s summary keeps rank 0's share).
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    state = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    return {"loss": loss, "world_size": args.world_size, "state": state}


@pytest.mark.skipif(shutil.which("torchrun") is None and not
                    (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FIGA_DDP_OUT": str(tmp_path / "ddp.json")}
    proc = subprocess.run(
        [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node",
         "2", __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    single = run(tmp_path / "single", per_device=GLOBAL_BATCH)
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5)
    diff = max((torch.tensor(ddp["state"][k]) - torch.tensor(v)).abs().max().item()
               for k, v in single["state"].items())
    assert diff < 1e-5
    # The step moved the weights (a comparison of untouched weights would prove nothing).
    initial = load_model("tiny").state_dict()
    moved = max((torch.tensor(v) - initial[k]).abs().max().item()
                for k, v in single["state"].items())
    assert moved > 1e-3


if __name__ == "__main__":
    result = run(Path(os.environ["FIGA_DDP_OUT"]).parent / "ddp-out",
                 per_device=GLOBAL_BATCH // int(os.environ["WORLD_SIZE"]))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(os.environ["FIGA_DDP_OUT"]).write_text(json.dumps(result))
