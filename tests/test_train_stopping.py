"""How ``editalign train`` ends when it cannot finish: SIGTERM saves and says how to resume,
a full disk is said as such, a planted pickle in a checkpoint is a clean refusal."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editalign.cli import main
from editalign.train.cli import checkpoint_problem
from editalign.train.stopping import disk_full

PAIRS = [{"id": "a", "prompt": "Say hi.", "original": "hello there friend",
          "revised": "hi there friend"},
         {"id": "b", "prompt": "Count.", "original": "one two four", "revised": "one two three"}]
QUIET = ["--report_to", "none", "--disable_tqdm", "True", "--per_device_train_batch_size", "1"]


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def test_sigterm_saves_a_checkpoint_at_the_step_end_and_says_how_to_resume(pairs, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "editalign.cli", "train", "figa", "--model", "tiny",
            "--data", str(pairs), "--output_dir", str(out), "--max_steps", "400",
            "--logging_steps", "1", *QUIET]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "'loss'" in line:  # training is under way
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, rest
    [checkpoint] = out.glob("checkpoint-*")
    assert checkpoint_problem(checkpoint) is None  # complete: resumable
    step = int(checkpoint.name.split("-")[1])
    assert f"stopped after step {step} of 400" in rest and "--resume_from_checkpoint last" in rest
    assert not (out / "train_results.json").exists()  # not mistaken for a finished run
    # The advertised resume works.
    assert main(["train", "figa", "--model", "tiny", "--data", str(pairs), "--output_dir",
                 str(out), "--max_steps", str(step + 1), "--resume_from_checkpoint", "last",
                 *QUIET]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == step + 1


def test_a_planted_pickle_in_a_trainer_checkpoint_is_a_clean_refusal(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "figa", "--model", "tiny", "--data", str(pairs), "--output_dir",
                 str(out), "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
                 *QUIET]) == 0
    torch.save({"state": argparse.Namespace(code="runs when unpickled")},
               out / "checkpoint-1" / "optimizer.pt")
    capsys.readouterr()
    code = main(["train", "figa", "--model", "tiny", "--data", str(pairs), "--output_dir",
                 str(out), "--max_steps", "2", "--resume_from_checkpoint", "last", *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert f"{out / 'checkpoint-1' / 'optimizer.pt'}: refused" in err[-1]
    assert "argparse.Namespace" in err[-1] and "weights_only=False" not in "\n".join(err)


def _tmpfs(path: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_while_saving_is_said_with_the_file(pairs, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "64k"):
        pytest.skip("no small filesystem can be mounted here (needs root on Linux)")
    try:
        code = main(["train", "figa", "--model", "tiny", "--data", str(pairs), "--output_dir",
                     str(disk / "run"), "--max_steps", "2", "--save_strategy", "steps",
                     "--save_steps", "1", *QUIET])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "no space left on device while saving in" in err, err
        assert "checkpoint-1" in err  # the file it was writing
        # torch's own way of saying it: "unexpected pos" from its zip writer
        with pytest.raises(RuntimeError) as raised:
            torch.save(torch.zeros(100_000), disk / "big.pt")
        message = disk_full(raised.value, disk)
        assert message is not None and "no space left on device" in str(message)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
