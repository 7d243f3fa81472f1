"""Shared-prefix pair layout: per-token log-probs and gradients equal two separate passes."""

from __future__ import annotations

import pytest
import torch

from editalign.batching.shared_prefix import SUFFIX_ORDER as SIDES
from editalign.batching.shared_prefix import (
    additive_mask,
    build_shared_prefix_batch,
    common_prefix_length,
    layout_unsupported_reason,
    shared_prefix_block_mask,
    shared_prefix_forward,
    shared_prefix_mask,
    shared_prefix_mask_mod,
)
from editalign.models import load_model

PROMPT = [5, 17, 33, 40, 41, 42, 43, 7]  # 8 prompt tokens
EOS = 2

PAIRS = {
    # first edit in the middle of the response
    "mid_edit": ([*PROMPT, 60, 61, 62, 63, EOS], [*PROMPT, 60, 61, 70, 71, 63, 64, EOS]),
    # first edit at the first response token: the prefix is exactly the prompt
    "edit_at_first_response_token": ([*PROMPT, 60, 61, EOS], [*PROMPT, 90, 61, 62, EOS]),
    # no edit: original == revised, both suffixes empty
    "no_edit": ([*PROMPT, 60, 61, 62, EOS], [*PROMPT, 60, 61, 62, EOS]),
    # the original is a prefix of the revised side (empty original suffix)
    "original_is_prefix": ([*PROMPT, 60, 61], [*PROMPT, 60, 61, 62, EOS]),
    # nothing in common at all (no shared prefix)
    "no_common_prefix": ([9, 60, 61, EOS], [8, 60, 62, 63, EOS]),
}


def separate_logprobs(model, ids: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    return logits[:-1].float().log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def tiny():
    model = load_model("tiny", dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([1], [2]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_layout_positions_and_mask():
    original, revised = [1, 2, 3, 4], [1, 2, 5, 6, 7]
    b = build_shared_prefix_batch([(original, revised), ([1, 9], [1, 8])], pad_token_id=0)
    assert b.prefix_lengths == [2, 1]
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert b.num_tokens == 7 + 3
    m = b.attention_mask[0, 0]
    # the revised suffix (rows 4..6) sees the prefix and itself, never the original suffix
    assert m[4].tolist() == [True, True, False, False, True, False, False]
    assert m[6].tolist() == [True, True, False, False, True, True, True]
    assert m[3].tolist() == [True, True, True, True, False, False, False]
    # the first suffix token of each side is predicted from the last prefix position
    assert b.source["original"][0].tolist() == [0, 1, 2]
    assert b.source["revised"][0].tolist() == [0, 1, 4, 5]
    assert b.target["revised"][0].tolist() == [2, 5, 6, 7]
    # padding (row 1 is 3 tokens long) sees only itself and is not gathered
    m1 = b.attention_mask[1, 0]
    assert m1[5].tolist() == [False] * 5 + [True, False]
    assert b.valid["original"][1].tolist() == [True, False, False]


def test_mask_segments_and_additive():
    seg = torch.tensor([[0, 0, 1, 2, -1]])
    m = shared_prefix_mask(seg)[0, 0]
    assert m[3].tolist() == [True, True, False, True, False]
    add = additive_mask(shared_prefix_mask(seg), torch.float32)
    assert add[0, 0, 3, 2] == torch.finfo(torch.float32).min and add[0, 0, 3, 1] == 0


@pytest.mark.parametrize("case", list(PAIRS))
def test_logprobs_equal_separate_passes(tiny, case):
    original, revised = PAIRS[case]
    with torch.no_grad():
        shared = shared_prefix_forward(tiny, build_shared_prefix_batch([(original, revised)]))
        for name, ids in zip(SIDES, (original, revised), strict=True):
            torch.testing.assert_close(shared[name][0], separate_logprobs(tiny, ids),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_batched_logprobs_and_gradients_equal_separate_passes(attn, request):
    if attn == "flex_attention":
        request.getfixturevalue("flex_reference")
    model = load_model("tiny", dtype=torch.float32, attn_implementation=attn)
    pairs = list(PAIRS.values())
    gen = torch.Generator().manual_seed(0)
    weights = {(i, s): torch.randn(len(p[k]) - 1, generator=gen)
               for i, p in enumerate(pairs) for k, s in enumerate(SIDES)}

    model.zero_grad()
    batch = build_shared_prefix_batch(pairs, pad_token_id=0)
    shared = shared_prefix_forward(model, batch)
    loss = sum((shared[s][i, :len(w)] * w).sum() for (i, s), w in weights.items())
    loss.backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    if attn == "flex_attention":  # the reference: separate passes through SDPA, same weights
        model = load_model("tiny", dtype=torch.float32, attn_implementation="sdpa")
    ref_loss = 0.0
    for (i, s), w in weights.items():
        ref = separate_logprobs(model, list(pairs[i][SIDES.index(s)]))
        torch.testing.assert_close(shared[s][i, :len(w)].detach(), ref.detach(),
                                   rtol=1e-5, atol=1e-5)
        assert (shared[s][i, len(w):] == 0).all()
        ref_loss = ref_loss + (ref * w).sum()
    ref_loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(shared_grads[n], p.grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, n=n: f"{n}: {m}")


def test_unsupported_attention_reports_reason(tiny):
    assert layout_unsupported_reason(tiny) is None

    class Cfg:
        _attn_implementation = "flash_attention_2"

    class Fake:
        config = Cfg()

    reason = layout_unsupported_reason(Fake())
    assert reason is not None and "flash_attention_2" in reason
    with pytest.raises(ValueError, match="unavailable"):
        shared_prefix_forward(Fake(), build_shared_prefix_batch([PAIRS["mid_edit"]]))


def test_block_mask_rule_is_the_dense_mask():
    from torch.nn.attention.flex_attention import create_mask

    pairs = [*PAIRS.values(), ([1] * 150 + [3, 4], [1] * 150 + [5, 6, 7])]  # > one block
    batch = build_shared_prefix_batch(pairs, dense_mask=False)
    assert batch.attention_mask is None and batch.segments is not None
    b, length = batch.segments.shape
    rule = create_mask(shared_prefix_mask_mod(batch.segments), b, None, length, length,
                       device="cpu")
    assert torch.equal(rule, shared_prefix_mask(batch.segments))
    assert torch.equal(rule, build_shared_prefix_batch(pairs).attention_mask)
    # the BlockMask keeps the same rule and skips fully masked tiles: with 16-token blocks
    # the long pair's suffix block (rows 144..) never visits the padding-only blocks
    block = shared_prefix_block_mask(batch.segments, block_size=16)
    assert block.shape == (b, 1, length, length)
    dense_blocks = block.to_dense()
    assert dense_blocks.shape[-1] == -(-length // 16)
    assert not dense_blocks[:len(PAIRS), 0, 0, 1:].any()  # short rows: block 0 sees only block 0


@pytest.fixture
def flex_reference(monkeypatch):
    """FlexAttention on CPU through torch's unfused reference implementation, with
    gradients.

    transformers always wraps flex_attention in ``torch.compile`` (inductor: ~25 s per new
    shape on this CPU, cached afterwards), and torch 2.13 refuses the backward on CPU in a
    device check (``flex_attention._validate_device``: "FlexAttention does not support
    backward on CPU"). The reference implementation it falls back to without inductor
    differentiates fine on CPU, so the fast tests use it with the check lifted; the fused
    kernels are tested on a GPU (``test_flex_attention_gpu_*``) and the compiled CPU forward
    in a slow test.
    """
    import torch.nn.attention.flex_attention as torch_flex
    import transformers.integrations.flex_attention as hf_flex

    def unfused(query, key, value, score_mod=None, block_mask=None, enable_gqa=False,
                scale=None, kernel_options=None, training=False, **kwargs):
        return torch_flex.flex_attention(query, key, value, score_mod=score_mod,
                                         block_mask=block_mask, enable_gqa=enable_gqa,
                                         scale=scale, kernel_options=kernel_options, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", unfused)
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)


@pytest.mark.slow
def test_flex_attention_compiled_cpu_forward_equals_separate_passes():
    # transformers' own path: torch.compile(flex_attention) with inductor's CPU kernels.
    model = load_model("tiny", dtype=torch.float32, attn_implementation="flex_attention")
    sdpa = load_model("tiny", dtype=torch.float32, attn_implementation="sdpa")
    pairs = list(PAIRS.values())
    with torch.no_grad():
        shared = shared_prefix_forward(model, build_shared_prefix_batch(pairs,
                                                                        dense_mask=False))
        for i, pair in enumerate(pairs):
            for name, ids in zip(SIDES, pair, strict=True):
                ref = separate_logprobs(sdpa, list(ids))
                torch.testing.assert_close(shared[name][i, :len(ref)], ref, rtol=1e-5,
                                           atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused FlexAttention kernels "
                    "(forward and backward) run on a GPU; CPU: see flex_reference")
def test_flex_attention_gpu_logprobs_and_gradients_equal_separate_passes():
    pairs = [*PAIRS.values(), ([5] * 300 + [60, 61, 2], [5] * 300 + [70, 71, 72, 2])]
    flex = load_model("tiny", dtype=torch.float32, attn_implementation="flex_attention").cuda()
    sdpa = load_model("tiny", dtype=torch.float32, attn_implementation="sdpa").cuda()
    shared = shared_prefix_forward(flex, build_shared_prefix_batch(pairs, dense_mask=False))
    sum(shared[s].sum() for s in SIDES).backward()
    ref_loss = 0.0
    for i, pair in enumerate(pairs):
        for name, ids in zip(SIDES, pair, strict=True):
            logits = sdpa(input_ids=torch.tensor([ids], device="cuda"), use_cache=False).logits[0]
            ref = logits[:-1].float().log_softmax(-1).gather(
                -1, torch.tensor(ids[1:], device="cuda")[:, None])[:, 0]
            torch.testing.assert_close(shared[name][i, :len(ref)].detach(), ref.detach(),
                                       rtol=1e-4, atol=1e-4)
            ref_loss = ref_loss + ref.sum()
    ref_loss.backward()
    for (n, p), q in zip(flex.named_parameters(), sdpa.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4,
                                   msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.slow
def test_smollm2_logprobs_and_gradients_equal_separate_passes():
    from editalign.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", dtype=torch.float32, attn_implementation="sdpa")
    prompt = tok("Question: what is the capital of France? Passage: Paris is the capital "
                 "and largest city of France.\nAnswer:")["input_ids"]
    a = prompt + tok(" The capital is Lyon, a city.")["input_ids"] + [tok.eos_token_id]
    b = prompt + tok(" The capital is Paris, a city.")["input_ids"] + [tok.eos_token_id]
    first = prompt + tok(" Paris.")["input_ids"] + [tok.eos_token_id]
    pairs = [(a, b), (a, a), (b, first)]
    batch = build_shared_prefix_batch(pairs, pad_token_id=tok.pad_token_id or 0)
    shared = shared_prefix_forward(model, batch)
    loss = sum(shared[s][i].sum() for i in range(len(pairs)) for s in SIDES)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref_loss = 0.0
    for i, pair in enumerate(pairs):
        for k, s in enumerate(SIDES):
            ref = separate_logprobs(model, list(pair[k]))
            torch.testing.assert_close(shared[s][i, :len(ref)].detach(), ref.detach(),
                                       rtol=1e-4, atol=1e-4)
            ref_loss = ref_loss + ref.sum()
    ref_loss.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-4,
                                       msg=lambda m, n=n: f"{n}: {m}")


# ----------------------------------------------------------------------------- FIGA wiring


def figa_pairs(tok):
    from editalign.data.labeling import label_pairs
    from editalign.data.pairs import EditPair

    raw = [
        EditPair(prompt="Q0: what colour is the sky? Please answer.", original="It is green.",
                 revised="It is blue, mostly.", id="mid"),
        EditPair(prompt="Q1: name a fruit.", original="Carrot, I think.",
                 revised="Apple.", id="first-token"),
        EditPair(prompt="Q2: what is 2+2?", original="It is 4.", revised="It is 4.", id="same"),
        EditPair(prompt="Q3: and 3+3?", original="Six, I believe really.",
                 revised="Six, I believe.", id="deletion"),
    ]
    labeled, _ = label_pairs(raw, tok)
    return labeled


def figa_trainer(tmp_path, tok, pairs, **kw):
    from editalign.train.figa import FIGAConfig, FIGATrainer

    base = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none",
            "per_device_train_batch_size": len(pairs), "max_steps": 1, "seed": 0,
            "disable_tqdm": True, "save_strategy": "no", "logging_steps": 1}
    args = FIGAConfig(**{**base, **kw})
    return FIGATrainer(model=load_model("tiny", attn_implementation="sdpa"), args=args,
                       train_dataset=pairs, processing_class=tok)


@pytest.mark.parametrize("gate", [{"gate": "none", "gamma": 0.5},
                                  {"gate": "le", "tau": 5.5, "gamma": 0.2}])
def test_figa_shared_layout_gives_the_padded_loss_and_gradients(tmp_path, gate):
    from editalign.batching.lm import PairCollator, pair_features
    from editalign.models import load_tokenizer

    tok = load_tokenizer("tiny")
    pairs = figa_pairs(tok)
    assert any(p.original.input_ids == p.revised.input_ids for p in pairs)
    t = figa_trainer(tmp_path, tok, pairs, pair_layout="shared", **gate)
    features, _ = pair_features(pairs)
    shared = t.data_collator(features)
    assert shared["attention_mask"].dim() == 4 and "gather_index" in shared
    padded = PairCollator(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          alpha=t.args.alpha, beta=t.args.beta, gamma=t.args.gamma)(features)
    assert shared["input_ids"].numel() < padded["input_ids"].numel()
    results = []
    for b in (padded, shared):
        t.model.zero_grad()
        loss = t.compute_loss(t.model, b)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in t.model.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)


def test_figa_shared_layout_trains_like_padded(tmp_path):
    from editalign.models import load_tokenizer

    tok = load_tokenizer("tiny")
    pairs = figa_pairs(tok)
    kw = {"optim": "sgd", "learning_rate": 1.0, "gamma": 0.2, "tau": 5.5, "max_steps": 2,
          "per_device_train_batch_size": 2}
    padded = figa_trainer(tmp_path / "a", tok, pairs, **kw)
    shared = figa_trainer(tmp_path / "b", tok, pairs, pair_layout="shared", **kw)
    losses = [t.train().training_loss for t in (padded, shared)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    w, s = padded.model.state_dict(), shared.model.state_dict()
    assert max((w[k] - s[k]).abs().max().item() for k in w) < 1e-5


def test_figa_shared_layout_falls_back_to_padded_with_a_reason(tmp_path, caplog):
    from editalign.batching.lm import pair_features
    from editalign.models import load_tokenizer
    from editalign.train.figa import FIGAConfig, FIGATrainer

    tok = load_tokenizer("tiny")
    model = load_model("tiny")
    model.config._attn_implementation = "flash_attention_2"  # pretend: cannot take the mask
    args = FIGAConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                      pair_layout="shared")
    with caplog.at_level("WARNING", logger="editalign.batching.layout"):
        t = FIGATrainer(model=model, args=args, train_dataset=figa_pairs(tok),
                        processing_class=tok)
    # the config keeps what was asked for; the layout object says what runs, and why
    assert args.pair_layout == "shared" and t.pair_layout.layout == "padded"
    assert "flash_attention_2" in t.pair_layout.fallback_reason
    assert t.data_collator.layout is t.pair_layout
    assert t.data_collator(pair_features(figa_pairs(tok))[0])["attention_mask"].dim() == 2
    assert "flash_attention_2" in caplog.text


def test_pair_layout_option():
    from editalign.train.figa import FIGAConfig

    assert FIGAConfig(output_dir="x", use_cpu=True).pair_layout == "padded"
    packed = FIGAConfig(output_dir="x", use_cpu=True, pair_layout="packed")
    assert packed.padding_free
    assert FIGAConfig(output_dir="x", use_cpu=True, padding_free=True).pair_layout == "packed"
    with pytest.raises(ValueError, match="contradicts"):
        FIGAConfig(output_dir="x", use_cpu=True, padding_free=True, pair_layout="shared")
    with pytest.raises(ValueError, match="pair_layout"):
        FIGAConfig(output_dir="x", use_cpu=True, pair_layout="diagonal")


def test_auto_layout_chooses_per_batch(tmp_path):
    from editalign.batching.lm import pair_features
    from editalign.batching.shared_prefix import shared_prefix_ratio
    from editalign.models import load_tokenizer
    from editalign.train.figa import AUTO_SHARED_MAX_RATIO

    tok = load_tokenizer("tiny")
    long_prompt = figa_pairs(tok)[:1]  # prompt + common prefix dominate: shared pays off
    long_prompt[0].original.input_ids = [5] * 60 + long_prompt[0].original.input_ids
    long_prompt[0].original.labels = [-100] * 60 + long_prompt[0].original.labels
    long_prompt[0].revised.input_ids = [5] * 60 + long_prompt[0].revised.input_ids
    long_prompt[0].revised.labels = [-100] * 60 + long_prompt[0].revised.labels
    t = figa_trainer(tmp_path, tok, long_prompt, pair_layout="auto")
    feats, _ = pair_features(long_prompt)
    assert shared_prefix_ratio(feats) <= AUTO_SHARED_MAX_RATIO and "gather_index" in t.data_collator(feats)
    # a pair with nothing in common: shared is no smaller, the batch is padded
    different = [{"original_input_ids": [1, 2, 3, 4], "original_labels": [-100, 0, 0, 0],
                  "revised_input_ids": [9, 8, 7, 6], "revised_labels": [-100, 0, 0, 0]}]
    assert shared_prefix_ratio(different) == 1.0
    out = t.data_collator(different)
    assert "gather_index" not in out and out["attention_mask"].dim() == 2


@pytest.mark.parametrize("layout", ["shared", "auto"])
def test_figa_flex_shared_layout_gives_the_sdpa_padded_loss_and_gradients(
        tmp_path, flex_reference, layout):
    from editalign.batching.lm import PairCollator, pair_features
    from editalign.models import load_tokenizer
    from editalign.train.figa import FIGAConfig, FIGATrainer

    tok = load_tokenizer("tiny")
    pairs = figa_pairs(tok)
    args = FIGAConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                      pair_layout=layout, gamma=0.2, tau=5.5, disable_tqdm=True)
    flex = FIGATrainer(model=load_model("tiny", attn_implementation="flex_attention"),
                       args=args, train_dataset=pairs, processing_class=tok)
    assert flex.args.pair_layout == layout  # no fallback: flex takes the layout
    sdpa = figa_trainer(tmp_path / "sdpa", tok, pairs, gamma=0.2, tau=5.5)  # padded
    features, _ = pair_features(pairs)
    shared = flex.data_collator(features)
    # the BlockMask is built on the device from the segments; no dense (B, 1, L, L) mask
    assert "segments" in shared and "attention_mask" not in shared
    padded = PairCollator(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          alpha=1.0, beta=0.5, gamma=0.2)(features)
    results = []
    for trainer, batch in ((sdpa, padded), (flex, shared)):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in trainer.model.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
