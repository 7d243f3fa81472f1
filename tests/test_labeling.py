import json

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from editalign import IGNORE, Label, align
from editalign.data.io import read_labeled, write_labeled
from editalign.data.labeling import (
    LabeledPair,
    LabelingConfig,
    SkipPair,
    label_pair,
    label_pairs,
    render_prompt,
)
from editalign.data.pairs import EditPair
from editalign.eval.spans import edit_label_agreement, human_bad_tokens
from editalign.models import load_tokenizer

E, A, S, D = Label.EQUAL, Label.ADDED, Label.SUBSTITUTED, Label.DELETED


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def pair(prompt="Q: colour of the sky?\nA:", original=" The sky is green.",
         revised=" The sky is blue.", **kw):
    return EditPair(prompt=prompt, original=original, revised=revised, id=kw.pop("id", "p0"),
                    meta=kw.pop("meta", {}))


def test_sides_split_at_the_prompt_boundary_and_end_with_eos(tok):
    lp = label_pair(pair(), tok)
    for side, text in ((lp.original, lp.original_text), (lp.revised, lp.revised_text)):
        assert tok.decode(side.input_ids[: side.response_start]) == lp.prompt_text
        assert tok.decode(side.response_ids[:-1]) == text
        assert side.input_ids[-1] == tok.eos_token_id
        assert len(side.labels) == len(side.input_ids)
        assert side.labels[: side.response_start] == [IGNORE] * side.response_start
        assert side.response_labels[-1] == E  # EOS is kept on both sides
        assert len(side.offsets) == len(side.response_ids)


def test_labels_are_the_alignment_of_the_response_tokens(tok):
    lp = label_pair(pair(), tok)
    ref = align(lp.original.response_ids[:-1], lp.revised.response_ids[:-1])
    assert lp.original.response_labels[:-1] == ref.original_labels
    assert lp.revised.response_labels[:-1] == ref.revised_labels
    assert lp.edit_distance == ref.distance > 0
    # "green" -> "blue": the changed characters are flagged, the shared words are not.
    flagged = "".join(lp.original_text[s:e] for (s, e), lab
                      in zip(lp.original.offsets, lp.original.response_labels, strict=False)
                      if lab != E)
    assert set(flagged) <= set("green") and "The sky" not in flagged


def test_chat_prompts_use_the_template_without_doubling_special_tokens(tok):
    messages = [{"role": "user", "content": "colour of the sky?"}]
    text, add_special = render_prompt(messages, tok)
    assert text.endswith(tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)[-20:])
    assert add_special is False
    lp = label_pair(pair(prompt=messages), tok)
    assert lp.prompt_text == text
    assert tok.decode(lp.revised.input_ids[: lp.revised.response_start]) == text
    # text prompts stay as they are unless chat_template="always"
    assert render_prompt("hi", tok)[0] == "hi"
    assert render_prompt("hi", tok, "always")[0] != "hi"
    assert render_prompt(messages, tok, "never")[0] == "user: colour of the sky?\nassistant: "


def _merging_tokenizer():
    """A BPE whose vocabulary merges "hel" + "lo" into one token across the boundary."""
    vocab = {c: i for i, c in enumerate(["<eos>", "h", "e", "l", "o", "w", "r", "d", "S", "a",
                                         "y", ":", "he", "hel", "hell", "hello"])}
    merges = [("h", "e"), ("he", "l"), ("hel", "l"), ("hell", "o")]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def test_token_merged_across_the_boundary_belongs_to_the_response():
    tok = _merging_tokenizer()
    lp = label_pair(pair(prompt="Say: hel", original="lo world", revised="lo word"), tok)
    side = lp.original
    first = tok.convert_ids_to_tokens(side.response_ids[0])
    assert first == "hello"  # straddles the boundary: it carries response characters
    assert tok.convert_ids_to_tokens(side.input_ids[: side.response_start]) == ["S", "a", "y", ":"]
    assert side.offsets[0] == (0, 2)  # only the response's part of the merged token
    assert len(side.labels) == len(side.input_ids)
    assert lp.original.response_labels[0] == E  # same merged token on both sides


def test_truncation_keep_start_cuts_the_response_end_and_is_counted(tok):
    full = label_pair(pair(), tok)
    n = len(full.original.input_ids)
    cut = label_pair(pair(), tok, LabelingConfig(max_length=n - 3))
    assert cut.truncated and cut.meta["truncated_tokens"] >= 3
    assert cut.original.input_ids == full.original.input_ids[: n - 3]
    assert cut.original.labels == full.original.labels[: n - 3]
    assert len(cut.original.offsets) == len(cut.original.response_ids)


def test_truncation_keep_end_drops_prompt_tokens_first(tok):
    full = label_pair(pair(), tok)
    n = len(full.original.input_ids)
    cut = label_pair(pair(), tok, LabelingConfig(max_length=n - 3, truncation="keep_end"))
    assert cut.original.response_ids == full.original.response_ids
    assert cut.original.response_labels == full.original.response_labels
    assert cut.original.response_start == full.original.response_start - 3


def test_edit_ratio_of_a_truncated_pair_uses_the_untruncated_responses(tok):
    from rapidfuzz.distance import Levenshtein

    # A long rewrite cut to a few response tokens: the distance counts the whole responses
    # (here about 60 tokens), so dividing by the ~5 kept tokens gave ratios far above 1.
    long = pair(prompt="Q:", original=" " + "wrong words here " * 4,
                revised=" " + "right answer now! " * 4)
    full = label_pair(long, tok)
    cut = label_pair(long, tok, LabelingConfig(max_length=full.original.response_start + 5))
    assert cut.truncated and cut.edit_distance == full.edit_distance
    o = tok(long.prompt + long.original)["input_ids"][len(tok(long.prompt)["input_ids"]):]
    r = tok(long.prompt + long.revised)["input_ids"][len(tok(long.prompt)["input_ids"]):]
    expected = Levenshtein.distance(o, r) / (max(len(o), len(r)) + 1)  # +1: the EOS
    assert cut.edit_ratio == pytest.approx(expected) == pytest.approx(full.edit_ratio)
    assert 0 < cut.edit_ratio < 1
    # The statistics see every pair: the histogram counts sum to the pairs kept.
    labeled, stats = label_pairs([long, pair()], tok, LabelingConfig(max_length=40))
    counts = stats.to_dict()["edit_ratio"]["histogram"]["counts"]
    assert sum(counts) == len(labeled) == 2
    assert stats.to_dict()["edit_ratio"]["max"] < 1


def test_response_truncated_away_is_skipped_with_a_reason(tok):
    lp = label_pair(pair(), tok)
    with pytest.raises(SkipPair, match="truncated away"):
        label_pair(pair(), tok, LabelingConfig(max_length=lp.original.response_start))


def test_word_granularity_labels_whole_words(tok):
    p = pair(prompt="Q:", original=" the cat sat", revised=" the bat sat")
    token = label_pair(p, tok)
    word = label_pair(p, tok, LabelingConfig(granularity="word"))

    def flagged(lp):
        return "".join(lp.original_text[s:e] for (s, e), lab
                       in zip(lp.original.offsets, lp.original.response_labels, strict=False)
                       if lab != E)

    assert flagged(token) == "c"  # byte-level tokens: only the changed byte
    assert flagged(word) == " cat"  # the whole word, with its leading space
    assert word.original.response_ids == token.original.response_ids


def test_label_pairs_counts_skips_no_edits_and_labels(tok):
    pairs = [pair(id="a"), pair(id="b", original="  "), pair(id="c", revised=""),
             pair(id="d", original=" same", revised=" same")]
    labeled, stats = label_pairs(pairs, tok, batch_size=2)
    assert [lp.id for lp in labeled] == ["a", "d"]
    d = stats.to_dict()
    assert d["pairs_in"] == 4 and d["kept"] == 2 and d["no_edit"] == 1
    assert d["skipped"] == {"empty original": 1, "empty revised": 1}
    assert d["label_counts"]["original"]["substituted"] > 0
    assert "deleted" not in d["label_counts"]["revised"]
    assert d["edit_ratio"]["max"] > 0 and d["edit_ratio"]["p10"] >= 0
    assert "labelled 2 of 4 pairs (1 with no edit)" in stats.summary()
    with pytest.raises(ValueError, match="'b': empty original"):
        label_pairs(pairs, tok, strict=True)


def test_batched_and_single_labelling_agree(tok):
    pairs = [pair(id=str(i), original=f" answer {i} is wrong", revised=f" answer {i} is right")
             for i in range(7)] + [pair(id="chat", prompt=[{"role": "user", "content": "x"}])]
    labeled, _ = label_pairs(pairs, tok, batch_size=3)
    for lp, p in zip(labeled, pairs, strict=True):
        single = label_pair(p, tok)
        assert lp.original == single.original and lp.revised == single.revised


def test_unknown_option_values_name_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: token, word"):
        LabelingConfig(granularity="phrase")
    with pytest.raises(ValueError, match="allowed: keep_start, keep_end"):
        LabelingConfig(truncation="middle")


def test_write_and_read_back_with_datasets(tok, tmp_path):
    spans = [{"start": 12, "end": 17, "type": "Wrong"}]
    pairs = [pair(meta={"error_spans": spans}),
             pair(id="x", original=" <script>alert(1)</script>", revised=" fine")]
    labeled, stats = label_pairs(pairs, tok)
    out = tmp_path / "labels"
    write_labeled(out, labeled, stats, config=LabelingConfig(), tokenizer=tok, model_name="tiny")
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 2 and ds[0]["original_labels"][-1] == E
    back, stats_json = read_labeled(out)
    assert back[0].original == labeled[0].original and back[0].meta == labeled[0].meta
    assert isinstance(back[0], LabeledPair)
    assert stats_json["labels"]["kept"] == 2 and stats_json["config"]["granularity"] == "token"
    html = (out / "preview.html").read_text()
    assert "<script>" not in html and "&lt;" in html  # tiny tokens are single characters
    assert 'class="t deleted' in html or 'class="t substituted-o' in html
    assert "human" in html


def test_span_agreement_counts_tokens_inside_human_spans(tok):
    # original " The sky is green." — the human marks "green" (chars 12..17).
    lp = label_pair(pair(meta={"error_spans": [{"start": 12, "end": 17, "type": "Wrong"}]}), tok)
    human = human_bad_tokens(lp.original_text, lp.original.offsets[:-1],
                             lp.meta["error_spans"])
    assert sum(h is not None for h in human) == 5
    agreement = edit_label_agreement([lp])
    flagged = sum(lab in (D, S) for lab in lp.original.response_labels)
    assert agreement.true_pos + agreement.false_pos == flagged
    assert agreement.true_pos + agreement.false_neg == 5
    assert agreement.precision == 1.0  # every flagged byte lies inside "green"
    # a pair without spans is left out
    assert edit_label_agreement([label_pair(pair(), tok)]).pairs == 0


def test_stats_json_is_plain_json(tok, tmp_path):
    _labeled, stats = label_pairs([pair()], tok)
    json.dumps(stats.to_dict())
