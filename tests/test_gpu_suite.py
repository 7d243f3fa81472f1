"""benchmarks/gpu_suite.py: ``--smoke`` runs every part's code path on CPU with a tiny model,
and the suite's FLOP count, peak table and failure handling are right. Never needs CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_suite


def test_smoke_runs_every_part_on_cpu_and_writes_the_json(tmp_path):
    out = tmp_path / "suite.json"
    payload = gpu_suite.main(["--smoke", "--peak-tflops", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["smoke"] and saved["device"] == "cpu" and saved["peak_bf16_tflops"] == 1
    assert set(saved["parts"]) == set(gpu_suite.PARTS)
    assert {k: v["status"] for k, v in saved["parts"].items()} == dict.fromkeys(
        gpu_suite.PARTS, "ok"), json.dumps(saved["summary"]["failed"])
    assert saved["summary"]["failed"] == {}
    for name in ("torch", "transformers", "trl", "accelerate", "peft"):
        assert name in saved["machine"]["versions"]
    assert "cuda_available" in saved["gpu"] and "nvidia_smi" in saved["gpu"]
    for part in ("figa_vs_sft_1b", "figa_vs_sft_smollm2"):
        result = saved["parts"][part]
        # both trainers ran the same sequences (FIGA's 2B sides = SFT's 2B rows)
        assert result["figa"]["tokens"] == result["sft"]["tokens"] > 0
        for method in ("figa", "sft"):
            r = result[method]
            flops = r["model_flops_per_step"] * gpu_suite.SMOKE["steps"]
            # MFU = model FLOPs / seconds / peak (1 TFLOPS here)
            assert r["mfu"] == pytest.approx(flops / r["seconds"] / 1e12, rel=1e-3, abs=1e-6)
        assert result["figa_vs_sft_tokens_per_s"] == pytest.approx(
            result["figa"]["tokens_per_s"] / result["sft"]["tokens_per_s"], rel=1e-2)
    arms = saved["parts"]["shared_vs_padded"]["arms"]
    assert "no backward on CPU" in arms["shared/flex_attention"]["skipped"]
    assert arms["shared/sdpa"]["input_positions_per_pair"] < arms["padded/sdpa"][
        "input_positions_per_pair"]
    assert arms["padded/sdpa"]["time_vs_padded_sdpa"] == 1.0
    ppo = saved["parts"]["ppo"]
    assert ppo["rollout_tokens_per_s"] > 0 and ppo["seconds_per_iteration_median"] > 0
    assert payload["summary"] == saved["summary"]


def test_model_flops_match_a_hand_count():
    model = gpu_suite.build_model("tiny", "cpu")
    shape = gpu_suite.MODEL_SHAPES["tiny"]
    h, i, layers, v = (shape[k] for k in ("hidden_size", "intermediate_size",
                                          "num_hidden_layers", "vocab_size"))
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i  # q, k, v, o; gate, up, down
    n = layers * per_layer + v * h  # + the (tied) LM head
    lengths = [10, 3]
    attention = sum(6 * layers * h * s * (s + 1) / 2 for s in lengths)
    assert gpu_suite.model_flops(model, lengths) == pytest.approx(6 * n * 13 + attention)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA A10G", None), ("Tesla T4", None)])
def test_peak_table_matches_whole_names(name, peak):
    assert gpu_suite.peak_tflops(name, None)[0] == peak
    assert gpu_suite.peak_tflops(name, 123.0) == (123.0, "--peak-tflops")


def test_a_failing_or_hanging_part_is_recorded_and_the_suite_moves_on():
    failed = gpu_suite.run_part("token_rm", {**gpu_suite.SMOKE, "shape": "no-such-shape"},
                                gpu=False, peak=None)
    assert failed["status"] == "failed" and "no-such-shape" in failed["error"]
    hung = gpu_suite.run_isolated("ppo", gpu_suite.SMOKE, gpu=False, peak=None, limit=0.5)
    assert hung["status"] == "timed out" and "killed after" in hung["error"]
