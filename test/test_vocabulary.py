import pytest

from vla_driver.core.vocabulary import (
    AnswerError,
    Decision,
    DecisionVocabulary,
    MissingAnswerTag,
    MissingSeparator,
    UnbalancedTag,
    UnknownPath,
    UnknownSpeed,
)


def test_default_is_alphadrive_and_minddrive_preset():
    v = DecisionVocabulary()
    assert v.speeds == ("KEEP", "ACCELERATE", "DECELERATE", "STOP")
    assert len(v.paths) == 5 and v.num_candidates == 20
    m = DecisionVocabulary.preset("minddrive")
    assert (len(m.speeds), len(m.paths)) == (7, 6)
    assert m.find_speed("stop") == "stop" and m.find_path("left_change") == "change_lane_left"


def test_candidate_index_round_trip():
    v = DecisionVocabulary()
    for i in range(v.num_candidates):
        assert v.candidate_index(*v.candidate(i)) == i
    with pytest.raises(IndexError):
        v.candidate(20)


def test_parse_valid_answers():
    v = DecisionVocabulary()
    d = v.parse_answer("<think>A slow car ahead.</think>\n<answer> DECELERATE ,  STRAIGHT </answer>")
    assert d == Decision("DECELERATE", "STRAIGHT", "A slow car ahead.")
    assert v.parse_answer(Decision("KEEP", "LEFT_CHANGE", "x").answer_text()).path == "LEFT_CHANGE"
    assert v.parse_answer("<answer>STOP, RIGHT_TURN</answer>").reasoning == ""


@pytest.mark.parametrize("text,error", [
    ("KEEP, STRAIGHT", MissingAnswerTag),
    ("<answer>KEEP, STRAIGHT", UnbalancedTag),
    ("<think>a<answer>KEEP, STRAIGHT</answer>", UnbalancedTag),
    ("<answer>KEEP STRAIGHT</answer>", MissingSeparator),
    ("<answer>KEEP, STRAIGHT, STOP</answer>", MissingSeparator),
    ("<answer>FLY, STRAIGHT</answer>", UnknownSpeed),
    ("<answer>KEEP, UTURN</answer>", UnknownPath),
    ("<answer>keep, STRAIGHT</answer>", UnknownSpeed),
    ("<answer>KEEP, STRAIGHT</answer><answer>STOP, STRAIGHT</answer>", UnbalancedTag),
    ("<answer>KEEP, STRAIGHT</answer><think>late</think>", UnbalancedTag),
])
def test_malformed_answers_raise_typed_errors(text, error):
    with pytest.raises(error) as info:
        DecisionVocabulary().parse_answer(text)
    assert isinstance(info.value, AnswerError) and info.value.reason != "malformed"


def test_non_string_answer_is_an_answer_error():
    with pytest.raises(AnswerError):
        DecisionVocabulary().parse_answer(None)


def test_bad_vocabularies_rejected():
    with pytest.raises(ValueError):
        DecisionVocabulary(("KEEP", "KEEP"), ("STRAIGHT",))
    with pytest.raises(ValueError):
        DecisionVocabulary(("KEEP",), ("KEEP",))
    with pytest.raises(ValueError):
        DecisionVocabulary(("KE EP",), ("STRAIGHT",))
    with pytest.raises(ValueError):
        DecisionVocabulary.preset("nope")


def test_greedy_candidate_breaks_near_ties_the_same_way_for_every_backend():
    import numpy as np

    from vla_driver.core.vocabulary import TIE_TOLERANCE, greedy_candidate

    probs = np.array([[0.1, 0.4], [0.4 + 8e-7, 0.1 - 8e-7]])  # a near-tie: candidates 1 and 2
    assert greedy_candidate(probs) == 1  # the first in vocabulary order, not the float winner (2)
    rng = np.random.default_rng(0)
    for _ in range(200):  # another backend's rounding (up to 3e-5) never changes the pick
        noisy = probs + rng.uniform(-1.5e-5, 1.5e-5, probs.shape)
        assert greedy_candidate(noisy) == 1
    clear = np.array([0.1, 0.4, 0.4 + 2 * TIE_TOLERANCE, 0.1])
    assert greedy_candidate(clear) == 2  # a real margin still wins
