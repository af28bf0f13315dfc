"""alignedvq/evaluation/scoring.py: tables of cases written from the rules of the official VQAv2
accuracy (GT-Vision-Lab/VQA vqaEval.py), lmms-eval's variant and the exact scorer."""

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from alignedvq.evaluation.scoring import (SCORERS, exact_score, lmms_normalise,
                                          process_digit_article, process_punctuation, scorer,
                                          vqav2_lmms_score, vqav2_score)

pytestmark = pytest.mark.unit


def humans(*groups):
    """Ten (or any number of) human answers from (answer, count) pairs."""
    return [a for a, n in groups for _ in range(n)]


@pytest.mark.parametrize("matches,expected", [
    # min(1, m/3) over the 10 leave-one-out subsets: holding out one of the m matching answers
    # leaves m - 1, holding out another leaves m.
    (0, 0.0),
    (1, (1 * 0 + 9 * 1 / 3) / 10),            # 0.3
    (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),        # 0.6
    (3, (3 * 2 / 3 + 7 * 1) / 10),            # 0.9
    (4, 1.0),                                 # min(1, 3/3) everywhere
    (10, 1.0),
])
def test_three_of_ten_leave_one_out_average(matches, expected):
    answers = humans(("2", matches), ("3", 10 - matches)) if matches < 10 else ["2"] * 10
    assert vqav2_score("2", answers) == pytest.approx(expected)
    assert vqav2_lmms_score("2", answers) == pytest.approx(expected)


def test_two_of_ten_is_exactly_point_six():
    assert vqav2_score("2", humans(("2", 2), ("3", 8))) == pytest.approx(0.6, abs=1e-12)


SPLIT = ("other", 6)  # disagreeing humans, so the official code normalises both sides

OFFICIAL = [
    # when all ten humans agree, the official code compares the raw prediction (white space
    # trimmed only): case and punctuation count
    ("yes", humans(("yes", 10)), 1.0),
    ("  yes\n", humans(("yes", 10)), 1.0),
    ("Yes", humans(("yes", 10)), 0.0),
    ("yes.", humans(("yes", 10)), 0.0),
    ("two", humans(("2", 10)), 0.0),
    # when they disagree both sides are normalised: number words to digits ...
    ("two", humans(("2", 4), SPLIT), 1.0),
    ("None", humans(("0", 4), SPLIT), 1.0),
    ("ten", humans(("10", 4), SPLIT), 1.0),
    ("eleven", humans(("11", 4), SPLIT), 0.0),           # manualMap stops at ten
    ("2", humans(("Two", 4), SPLIT), 1.0),                # the human side too
    # ... articles dropped, case folded ...
    ("The Dog", humans(("dog", 4), SPLIT), 1.0),
    ("a red an apple", humans(("red apple", 4), SPLIT), 1.0),
    ("another", humans(("another", 4), SPLIT), 1.0),     # whole words only
    # ... contractions restored ...
    ("dont", humans(("don't", 4), SPLIT), 1.0),
    ("Im", humans(("i'm", 4), SPLIT), 0.0),               # capitalised keys never match
    # ... punctuation: removed where it touches a space, else a space
    ("hot dog!", humans(("hot dog", 4), SPLIT), 1.0),
    ("left-right", humans(("left right", 3), ("x", 7)), 0.9),
    ("t-shirt", humans(("tshirt", 4), SPLIT), 0.0),
    ("yes , sir", humans(("yes sir", 4), SPLIT), 1.0),
    ("1,000", humans(("1000", 4), SPLIT), 1.0),           # digit-comma-digit: commas go
    ("yes.", humans(("yes", 4), SPLIT), 1.0),             # a full stop not before a digit goes
    ("3.5", humans(("3.5", 3), ("3", 7)), 0.9),           # ... before a digit it stays
    ("3.", humans(("3.5", 3), ("3", 7)), 1.0),
    ("it's", humans(("it's", 4), SPLIT), 1.0),            # the apostrophe is not punctuation
    # fewer than ten humans: the same formula, so a perfect answer scores below 1
    ("x", ["x", "x", "x"], pytest.approx(2 / 3)),
    ("x", ["x"], 0.0),
    ("x", [], 0.0),
]


@pytest.mark.parametrize("prediction,answers,expected", OFFICIAL)
def test_official_vqav2_rules(prediction, answers, expected):
    assert vqav2_score(prediction, answers) == expected


@pytest.mark.parametrize("prediction,answers,official,lmms", [
    # lmms-eval normalises every prediction first, whether or not the humans agree
    ("Yes", humans(("yes", 10)), 0.0, 1.0),
    ("yes.", humans(("yes", 10)), 0.0, 1.0),
    ("Two", humans(("2", 10)), 0.0, 1.0),
    ("what?", humans(("what", 10)), 0.0, 1.0),
    # and splits "'s" off before the official steps
    ("man's", humans(("man's", 4), SPLIT), 1.0, 0.0),
    ("man's", humans(("man 's", 4), SPLIT), 0.0, 1.0),
    ("dog", humans(("dog", 4), SPLIT), 1.0, 1.0),
])
def test_lmms_variant_differs_only_where_its_processor_does(prediction, answers, official,
                                                            lmms):
    assert vqav2_score(prediction, answers) == official
    assert vqav2_lmms_score(prediction, answers) == lmms


def test_normalisation_steps():
    assert process_punctuation("hello, world.") == "hello world"
    assert process_punctuation("a/b") == "a b" and process_punctuation("a / b") == "a  b"
    assert process_punctuation("1,000 cats, 2 dogs") == "1000 cats 2 dogs"
    # periodStrip's count is re.UNICODE (32): at most 32 full stops go
    assert process_punctuation("." * 40) == "." * 8
    assert process_digit_article("The  Three   Cats wont") == "3 cats won't"
    assert lmms_normalise(" Two Dogs, Yes? ") == "2 dogs yes"


@pytest.mark.parametrize("prediction,accepted,expected", [
    ("two", ["two"], 1.0),
    ("  Two. ", ["two"], 1.0),
    ("two", ["TWO."], 1.0),
    ("two..", ["two"], 0.0),
    ("2", ["two"], 0.0),
    ("top right", ["right", "top right"], 1.0),
    ("the square", ["square"], 0.0),
])
def test_exact_scorer(prediction, accepted, expected):
    assert exact_score(prediction, accepted) == expected


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=30), st.lists(st.sampled_from(["yes", "no", "2", "two", "a dog", "Dog."]),
                                      max_size=12))
def test_every_scorer_gives_a_float_in_the_unit_interval(prediction, answers):
    for score in SCORERS.values():
        value = score(prediction, answers)
        assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_scorer_names():
    assert scorer("vqav2") is vqav2_score
    with pytest.raises(ValueError, match="unknown scorer 'bleu'; expected one of exact, vqav2"):
        scorer("bleu")
