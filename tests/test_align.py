import random

import Levenshtein
from hypothesis import given, settings
from hypothesis import strategies as st

from editalign import Label, align
from editalign.data.align import align_words, apply_editops, word_spans

E, A, S, D = Label.EQUAL, Label.ADDED, Label.SUBSTITUTED, Label.DELETED


def test_methods_worked_example():
    # METHODS.md §1: ŷ = [10, 11, 12, 13, 2], ỹ = [10, 21, 12, 13, 14, 2] (EOS = 2).
    a = align([10, 11, 12, 13, 2], [10, 21, 12, 13, 14, 2])
    assert a.editops == [("replace", 1, 1), ("insert", 4, 4)]
    assert a.revised_labels == [E, S, E, E, A, E]
    assert a.original_labels == [E, S, E, E, E]
    # A(ỹ) = added/substituted positions plus the final EOS; D(ŷ) = deleted/substituted.
    a_set = {i for i, lab in enumerate(a.revised_labels) if lab in (A, S)} | {5}
    d_set = {i for i, lab in enumerate(a.original_labels) if lab in (D, S)}
    assert a_set == {1, 4, 5}
    assert d_set == {1}


def test_pure_deletion_and_insertion():
    assert align([1, 2, 3], [1, 3]).original_labels == [E, D, E]
    assert align([1, 3], [1, 2, 3]).revised_labels == [E, A, E]
    assert align([], [5, 6]).revised_labels == [A, A]
    assert align([5, 6], []).original_labels == [D, D]
    empty = align([], [])
    assert empty.original_labels == [] and empty.revised_labels == [] and empty.distance == 0


def test_identical_sequences_have_no_edit():
    a = align([4, 5, 6], [4, 5, 6])
    assert a.distance == 0
    assert a.original_labels == a.revised_labels == [E, E, E]


def test_editops_match_levenshtein_reference_on_random_sequences():
    rng = random.Random(0)
    for _ in range(500):
        vocab = rng.randint(2, 30)
        o = [rng.randrange(vocab) for _ in range(rng.randint(0, 60))]
        r = [rng.randrange(vocab) for _ in range(rng.randint(0, 60))]
        assert align(o, r).editops == [tuple(op) for op in Levenshtein.editops(o, r)]


token_lists = st.lists(st.integers(0, 12), max_size=40)


@settings(max_examples=300, deadline=None)
@given(token_lists, token_lists)
def test_properties(original, revised):
    a = align(original, revised)
    # lengths always match
    assert len(a.original_labels) == len(original)
    assert len(a.revised_labels) == len(revised)
    # applying the operations to the original yields the revised
    assert apply_editops(original, a.editops, revised) == revised
    # non-equal labels count the edit distance: one per substitution, insertion, deletion
    changed = (sum(lab in (A, S) for lab in a.revised_labels)
               + sum(lab == D for lab in a.original_labels))
    assert changed == a.distance == Levenshtein.distance(original, revised)
    # each side only carries the labels that exist on that side
    assert set(a.original_labels) <= {E, S, D}
    assert set(a.revised_labels) <= {E, S, A}
    assert sum(lab == S for lab in a.original_labels) == sum(lab == S for lab in a.revised_labels)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab c,.\n"), max_size=40))
def test_word_spans_cover_the_text(text):
    spans = word_spans(text)
    assert "".join(text[s:e] for s, e in spans) == text


def _char_offsets(text):
    return [(i, i + 1) for i in range(len(text))]


def test_word_granularity_marks_every_piece_of_a_changed_word():
    original, revised = "the cat sat", "the bat sat"
    # Tokens that split words: "the", " c", "at", " sat" / "the", " b", "at", " sat".
    o_off, r_off = [(0, 3), (3, 5), (5, 7), (7, 11)], [(0, 3), (3, 5), (5, 7), (7, 11)]
    a = align_words(original, revised, o_off, r_off)
    assert a.original_labels == [E, S, S, E]
    assert a.revised_labels == [E, S, S, E]
    # At token level, "at" would be equal: the reason for the word granularity.
    assert align(["the", " c", "at", " sat"], ["the", " b", "at", " sat"]).original_labels \
        == [E, S, E, E]


def test_word_granularity_insertion_deletion_and_special_tokens():
    original, revised = "a b c d", "a c d e"
    a = align_words(original, revised, [*_char_offsets(original), (0, 0)],
                    [*_char_offsets(revised), (0, 0)])
    # "b" deleted (with its leading space), "e" added; EOS-like empty spans stay equal.
    assert a.original_labels == [E, D, D, E, E, E, E, E]
    assert a.revised_labels == [E, E, E, E, E, A, A, E]
