"""`editalign train figa` and `train token-rm` across processes: 2 processes give the loss and
weights of 1 process on the same global batch, and a run resumed from a checkpoint ends
where the uninterrupted run ends.

Launchers, one per parameter:

- ``ddp-cpu``: ``torchrun --nproc_per_node 2`` with gloo on CPU. Runs here (slow: ~1 min).
- ``fsdp2-2gpu``: ``accelerate launch --config_file configs/accelerate/fsdp2.yaml`` with 2
  processes, FSDP2 sharding every decoder layer. Needs 2 GPUs.
- ``fsdp2-1gpu``: the same config with 1 process (FSDP2's wrapping, DTensor parameters,
  gathered saves and resume, without a second shard). Needs 1 GPU.

FSDP cannot run on CPU here, for a reason outside this project: torch's ``fully_shard``
itself trains on CPU with gloo, but accelerate (1.15) turns its FSDP plugin on only for
GPU-class distributed types (``AcceleratorState.__init__``: the ``fsdp_plugin`` branch is
under ``distributed_type in [MULTI_GPU, MULTI_XPU, ...]``); on CPU the Trainer silently
runs plain DDP (``is_fsdp_enabled`` False). So the FSDP2 cases skip without CUDA.

Every pair has the same token counts, so each rank's share of a batch has the same number
of scored tokens and a per-rank mean loss averages to the global one (token-rm's loss is
a per-batch mean; FIGA's normaliser is summed over ranks anyway). The global batch is all
4 pairs, so the data order, which differs between 1 and 2 processes, cannot matter.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
FSDP2_CONFIG = REPO / "configs" / "accelerate" / "fsdp2.yaml"
BIN = Path(sys.executable).parent
GLOBAL_BATCH = 4
# The same length for every i < 10: equal token counts per pair (see the module docstring).
ROWS = [{"id": str(i), "prompt": f"Q{i}: colour of item {i}?",
         "original": f"Item {i} is red, I think.", "revised": f"Item {i} is BLUE."}
        for i in range(GLOBAL_BATCH)]
STEPS = 2
TRAINERS = {
    "figa": ["--gamma", "0.2", "--tau", "5.5"],
    "token-rm": ["--objective", "token_cls=1,edit_bt=0.5"],
}


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> str:
    with socket.socket() as s:  # torchrun hangs with --master_port 0: pick a free port
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launcher(name: str, processes: int) -> list[str]:
    if name == "plain" or (processes == 1 and name != "fsdp2-1gpu"):
        return [sys.executable, "-m", "editalign.cli"]
    if name == "ddp-cpu":
        return [str(BIN / "torchrun"), "--nnodes", "1", "--master_addr", "127.0.0.1",
                "--master_port", _free_port(), "--nproc_per_node", str(processes),
                "-m", "editalign.cli"]
    return [str(BIN / "accelerate"), "launch", "--config_file", str(FSDP2_CONFIG),
            "--num_processes", str(processes), "--main_process_port", _free_port(),
            "--mixed_precision", "no", "-m", "editalign.cli"]


def train(launcher: str, processes: int, trainer: str, data: Path, out: Path,
          max_steps: int = STEPS, resume: Path | None = None) -> dict:
    """Run ``editalign train TRAINER``; the logged losses and the saved weights."""
    argv = [*_launcher(launcher, processes), "train", trainer, "--model", "tiny",
            "--data", str(data), "--output_dir", str(out), "--max_steps", str(max_steps),
            "--per_device_train_batch_size", str(GLOBAL_BATCH // processes),
            "--optim", "sgd", "--learning_rate", "0.5", "--lr_scheduler_type", "constant",
            "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
            "--seed", "0", "--report_to", "none", "--disable_tqdm", "true",
            "--bf16", "false", *TRAINERS[trainer]]
    if launcher == "ddp-cpu":
        argv += ["--use_cpu", "true"] + (["--ddp_backend", "gloo"] if processes > 1 else [])
    if resume is not None:
        argv += ["--resume_from_checkpoint", str(resume)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stderr[-4000:]}"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(out.glob("*.safetensors")):
        weights.update({f"{file.stem}/{k}": v for k, v in load_file(file).items()})
    assert weights, f"no weights saved in {out}"
    return {"losses": {h["step"]: h["loss"] for h in history if "loss" in h},
            "weights": weights}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        atol: float) -> None:
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < atol, f"weights differ by {diff}"


LAUNCHERS = [
    pytest.param("ddp-cpu", 2, marks=[
        pytest.mark.slow,
        pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun not installed")]),
    pytest.param("fsdp2-2gpu", 2, marks=pytest.mark.skipif(
        _cuda_devices() < 2, reason="FSDP2 with 2 processes needs 2 GPUs (accelerate enables "
        "FSDP only on GPU-class devices; on CPU the Trainer would silently run DDP)")),
    pytest.param("fsdp2-1gpu", 1, marks=pytest.mark.skipif(
        _cuda_devices() < 1, reason="FSDP2 needs a GPU (accelerate enables FSDP only on "
        "GPU-class devices)")),
]


@pytest.mark.parametrize("trainer", list(TRAINERS))
@pytest.mark.parametrize(("launcher", "processes"), LAUNCHERS)
def test_processes_match_one_process_and_resume(tmp_path, trainer, launcher, processes):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    # The reference: 1 process on the same device, without sharding.
    single = train("plain" if launcher == "fsdp2-1gpu" else launcher, 1, trainer, data,
                   tmp_path / "single")
    sharded = train(launcher, processes, trainer, data, tmp_path / "sharded")
    assert sorted(single["losses"]) == sorted(sharded["losses"]) == list(range(1, STEPS + 1))
    for step, loss in single["losses"].items():
        assert sharded["losses"][step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert_same_weights(sharded["weights"], single["weights"], atol=1e-5)
    # The updates moved the weights: a comparison of untouched weights would prove nothing.
    first = train(launcher, processes, trainer, data, tmp_path / "first", max_steps=1)
    assert max((first["weights"][k] - single["weights"][k]).abs().max().item()
               for k in single["weights"]) > 1e-4
    # Resume from the step-1 checkpoint (model, optimiser, RNG, data position) in a fresh
    # directory: the same final loss and weights as the uninterrupted run.
    if launcher.startswith("fsdp2"):  # FSDP really ran: Trainer wrote its FSDP checkpoint
        assert list((tmp_path / "sharded" / "checkpoint-1").glob("pytorch_model_fsdp*"))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "sharded" / "checkpoint-1", resumed_dir / "checkpoint-1")
    resumed = train(launcher, processes, trainer, data, resumed_dir,
                    resume=resumed_dir / "checkpoint-1")
    assert resumed["losses"][STEPS] == pytest.approx(sharded["losses"][STEPS], rel=1e-5)
    assert_same_weights(resumed["weights"], sharded["weights"], atol=1e-6)


def test_reward_model_saves_a_gathered_state_dict(tmp_path):
    # Under FSDP the saving rank holds the full state dict while the module holds shards:
    # save_pretrained must write the given tensors, not the module's.
    from editalign.reward_model import TokenRewardModel

    model = TokenRewardModel.from_backbone("tiny")
    gathered = {k: v + 1.0 for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "rm", state_dict=gathered)
    loaded = TokenRewardModel.from_pretrained(tmp_path / "rm").state_dict()
    assert loaded.keys() == gathered.keys()
    for k, v in gathered.items():
        torch.testing.assert_close(loaded[k], v, msg=k)
