"""Hand-computed checks of the RL rewards (AlphaDrive planning, AutoVLA length penalty, trajectory, GRPO)."""
import math

import numpy as np
import pytest

from vla_driver.core.rewards import (
    PlanningRewardConfig,
    ReasoningPenaltyConfig,
    TrajectoryContext,
    TrajectoryRewardConfig,
    format_reward,
    group_advantages,
    planning_rewards,
    reasoning_chars,
    reasoning_penalty,
    trajectory_reward,
)
from vla_driver.core.trajectory import Trajectory, TrajectorySpec, constant_motion
from vla_driver.core.vocabulary import (
    ALPHADRIVE_PATHS,
    ALPHADRIVE_SPEEDS,
    MINDDRIVE_PATHS,
    MINDDRIVE_SPEEDS,
    Decision,
    DecisionVocabulary,
)

TRUTH = "<answer>KEEP, STRAIGHT</answer>"


def answer(speed, path, think="the road ahead is clear"):
    return f"<think>{think}</think><answer>{speed}, {path}</answer>"


def one(completion, truth=TRUTH, **kw):
    """Rewards of a single-completion group (share 1, so diversity is 1 - 0.2 = 0.8)."""
    return planning_rewards([completion], truth, **kw)[0]


# ------------------------------------------------------------------------------------------ accuracy
def test_exact_match_safety_critical_pair():
    r = one(answer("DECELERATE", "LEFT_TURN"), "DECELERATE, LEFT_TURN")
    assert r["error"] == ""
    assert (r["speed_accuracy"], r["path_accuracy"], r["format"]) == (1.0, 1.0, 1.0)
    assert r["speed_quality"] == pytest.approx(1.0 * 1.0 * 0.8)
    assert r["path_quality"] == pytest.approx(1.0 * 1.0 * 0.8)
    assert r["total"] == pytest.approx(0.8 + 0.8 + 1.0)


def test_exact_match_keep_straight_uses_lower_weights():
    r = one(answer("KEEP", "STRAIGHT"))
    assert r["total"] == pytest.approx(0.8 * 0.8 + 0.8 * 0.8 + 1.0)


def test_speed_only_match():
    r = one(answer("KEEP", "LEFT_TURN"))
    assert (r["speed_accuracy"], r["path_accuracy"]) == (1.0, 0.0)
    assert r["path_quality"] == 0.0
    assert r["total"] == pytest.approx(0.64 + 1.0)


def test_path_only_match():
    r = one(answer("STOP", "STRAIGHT"))
    assert (r["speed_accuracy"], r["path_accuracy"]) == (0.0, 1.0)
    assert r["speed_weight"] == 1.0 and r["speed_quality"] == 0.0
    assert r["total"] == pytest.approx(0.64 + 1.0)


def test_truth_forms_are_equivalent():
    c = answer("STOP", "RIGHT_TURN")
    ref = one(c, "<answer>STOP, RIGHT_TURN</answer>")
    assert one(c, "STOP, RIGHT_TURN") == ref
    assert one(c, Decision("STOP", "RIGHT_TURN")) == ref
    assert ref["total"] == pytest.approx(2.6)


@pytest.mark.parametrize("truth", ["", "KEEP", "<answer>FLY, STRAIGHT</answer>", None])
def test_bad_truth_is_a_clear_error(truth):
    with pytest.raises(ValueError, match="truth"):
        planning_rewards([answer("KEEP", "STRAIGHT")], truth)


@pytest.mark.parametrize(("completion", "reason"), [
    ("KEEP, STRAIGHT", "missing_answer_tag"),
    ("<think>slow down</think>", "missing_answer_tag"),
    ("", "missing_answer_tag"),
    ("<think>open<answer>KEEP, STRAIGHT</answer>", "unbalanced_tag"),
    ("<answer>KEEP, STRAIGHT</answer><think>late</think>", "unbalanced_tag"),
    ("<think>a</think><answer>KEEP, STRAIGHT</answer><answer>STOP, LEFT_TURN</answer>", "unbalanced_tag"),
    (None, "malformed"),
    (42, "malformed"),
])
def test_structural_defects_score_zero_accuracy_without_raising(completion, reason):
    r = one(completion)
    assert r["error"] == reason
    assert r["speed_accuracy"] == r["path_accuracy"] == r["speed_quality"] == r["path_quality"] == 0.0


def test_unknown_words_zero_only_the_missing_half():
    r = one(answer("KEEP", "FLY"))
    assert r["error"] == "unknown_path"
    assert (r["speed_accuracy"], r["path_accuracy"]) == (1.0, 0.0)
    assert r["total"] == pytest.approx(0.64 + 1.0)
    r = one(answer("HOVER", "STRAIGHT"))
    assert r["error"] == "unknown_speed"
    assert (r["speed_accuracy"], r["path_accuracy"]) == (0.0, 1.0)
    r = one(answer("keep", "straight"))  # the grammar is case-sensitive
    assert r["error"] == "unknown_speed" and r["total"] == 1.0


def test_multi_word_answer_scored_by_word_f1():
    r = one(answer("KEEP", "LEFT_TURN, STRAIGHT"))
    assert r["error"] == "missing_separator"
    assert r["speed_accuracy"] == 1.0
    # precision 1/2, recall 1 -> F1 2/3; weight mean(1.0, 0.8) = 0.9
    assert r["path_accuracy"] == pytest.approx(2 / 3)
    assert r["path_weight"] == pytest.approx(0.9)
    assert r["path_quality"] == pytest.approx(2 / 3 * 0.9 * 0.8)


def test_listing_every_speed_is_not_a_shortcut():
    r = one(answer("KEEP, ACCELERATE, DECELERATE, STOP", "STRAIGHT"))
    assert r["speed_accuracy"] == pytest.approx(2 * 0.25 * 1 / (0.25 + 1))  # 0.4
    assert r["total"] < one(answer("KEEP", "STRAIGHT"))["total"]


def test_repeated_word_loses_precision():
    assert one(answer("KEEP KEEP", "STRAIGHT"))["speed_accuracy"] == pytest.approx(2 / 3)


def test_strict_grammar_zeros_content_defects():
    cfg = PlanningRewardConfig(strict_grammar=True)
    r = one(answer("KEEP", "LEFT_TURN, STRAIGHT"), config=cfg)
    assert r["error"] == "missing_separator"
    assert r["speed_accuracy"] == r["path_accuracy"] == 0.0
    assert one(answer("KEEP", "STRAIGHT"), config=cfg)["total"] == pytest.approx(2.28)


def test_empty_group():
    assert planning_rewards([], TRUTH) == []


# ------------------------------------------------------------------------------------------ weights
SPEED_WEIGHT = {"KEEP": 0.8, "ACCELERATE": 0.9, "DECELERATE": 1.0, "STOP": 1.0}
PATH_WEIGHT = {"STRAIGHT": 0.8, "LEFT_TURN": 1.0, "RIGHT_TURN": 1.0, "LEFT_CHANGE": 1.0, "RIGHT_CHANGE": 1.0}


@pytest.mark.parametrize("speed", ALPHADRIVE_SPEEDS)
@pytest.mark.parametrize("path", ALPHADRIVE_PATHS)
def test_alphadrive_weight_of_every_class(speed, path):
    r = one(answer(speed, path), f"{speed}, {path}")
    assert r["speed_weight"] == SPEED_WEIGHT[speed] and r["path_weight"] == PATH_WEIGHT[path]
    assert r["total"] == pytest.approx(0.8 * SPEED_WEIGHT[speed] + 0.8 * PATH_WEIGHT[path] + 1.0)


MINDDRIVE_SPEED_WEIGHT = {
    "maintain_moderate_speed": 0.8, "maintain_slow_speed": 0.8, "maintain_fast_speed": 0.8, "stop": 1.0,
    "speed_up": 0.9, "slow_down": 1.0, "slow_down_rapidly": 1.0,
}
MINDDRIVE_PATH_WEIGHT = {
    "lanefollow": 0.8, "straight": 0.8, "turn_left": 1.0, "turn_right": 1.0,
    "change_lane_left": 1.0, "change_lane_right": 1.0,
}


@pytest.mark.parametrize("speed", MINDDRIVE_SPEEDS)
@pytest.mark.parametrize("path", MINDDRIVE_PATHS)
def test_minddrive_words_map_through_semantics(speed, path):
    vocab = DecisionVocabulary.preset("minddrive")
    r = one(answer(speed, path), f"{speed}, {path}", vocab=vocab)
    assert r["error"] == ""
    assert r["speed_weight"] == MINDDRIVE_SPEED_WEIGHT[speed]
    assert r["path_weight"] == MINDDRIVE_PATH_WEIGHT[path]


def test_alphadrive_words_are_unknown_to_minddrive():
    vocab = DecisionVocabulary.preset("minddrive")
    r = one(answer("KEEP", "lanefollow"), "maintain_moderate_speed, lanefollow", vocab=vocab)
    assert r["error"] == "unknown_speed" and r["speed_accuracy"] == 0.0 and r["path_accuracy"] == 1.0


def test_weight_override_by_word_and_unmapped_words():
    cfg = PlanningRewardConfig(speed_weights={"KEEP": 0.5})
    r = one(answer("KEEP", "STRAIGHT"), config=cfg)
    assert r["speed_weight"] == 0.5 and r["path_weight"] == 0.8
    custom = DecisionVocabulary(("CRAWL", "KEEP"), ("WEAVE", "STRAIGHT"), "custom")
    r = one(answer("CRAWL", "WEAVE"), "CRAWL, WEAVE", vocab=custom)
    assert r["speed_weight"] == r["path_weight"] == 1.0


# ---------------------------------------------------------------------------------------- diversity
def test_diversity_identical_group_is_cut_by_the_cap():
    rows = planning_rewards([answer("KEEP", "STRAIGHT")] * 8, TRUTH)
    assert [r["diversity"] for r in rows] == [0.8] * 8


def test_diversity_distinct_group():
    pairs = [(s, p) for s in ALPHADRIVE_SPEEDS for p in ALPHADRIVE_PATHS][:8]
    rows = planning_rewards([answer(s, p) for s, p in pairs], TRUTH)
    assert [r["diversity"] for r in rows] == pytest.approx([1 - 1 / 8] * 8)
    assert rows[0]["total"] == pytest.approx(0.8 * 0.875 * 2 + 1.0)  # KEEP, STRAIGHT is first


def test_diversity_mixed_group_and_answer_normalisation():
    same = ["<think>a</think><answer>KEEP,STRAIGHT</answer>", answer("KEEP", "STRAIGHT")]
    pairs = [(s, p) for s in ALPHADRIVE_SPEEDS for p in ALPHADRIVE_PATHS][1:9]
    rows = planning_rewards(same + [answer(s, p) for s, p in pairs], TRUTH)
    assert [r["diversity"] for r in rows] == pytest.approx([0.8, 0.8] + [0.9] * 8)  # shares 2/10, 1/10


def test_diversity_is_constant_in_small_groups():
    """Paper formula: with G <= 5 every share is >= 0.2, so the term is 0.8 throughout."""
    rows = planning_rewards([answer("KEEP", "STRAIGHT"), answer("STOP", "LEFT_TURN")], TRUTH)
    assert [r["diversity"] for r in rows] == [0.8, 0.8]


# ------------------------------------------------------------------------------------------- format
@pytest.mark.parametrize(("text", "expected"), [
    ("<think>a</think><answer>KEEP, STRAIGHT</answer>", 1.0),
    ("<think>a</think> \n\t <answer>KEEP, STRAIGHT</answer>", 1.0),
    ("  <think>line one\nline two</think>\n<answer>KEEP, STRAIGHT</answer>\n", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<answer>KEEP, STRAIGHT</answer>", 0.0),
    ("preamble <think>a</think><answer>KEEP, STRAIGHT</answer>", 0.0),
    ("<think>a</think><answer>KEEP, STRAIGHT</answer> trailing", 0.0),
    ("<think>a</think> text <answer>KEEP, STRAIGHT</answer>", 0.0),
    ("<think>a<answer>KEEP, STRAIGHT</answer>", 0.0),
    (None, 0.0),
])
def test_format_regex_edges(text, expected):
    assert format_reward(text) == expected
    if isinstance(text, str) and "KEEP" in text:
        assert one(text)["format"] == expected


# -------------------------------------------------------------------------------- length penalty
def test_reasoning_penalty_at_0_400_2000_chars():
    assert reasoning_penalty("<answer>KEEP, STRAIGHT</answer>") == 0.0  # fast thinking
    assert reasoning_penalty("<think></think><answer>KEEP, STRAIGHT</answer>") == 0.0
    assert reasoning_penalty(answer("KEEP", "STRAIGHT", "a" * 400)) == pytest.approx(0.15)
    # 0.3 * sigmoid(0.002 * 1600) = 0.3 / (1 + e^-3.2) = 0.3 * 0.960834
    assert reasoning_penalty(answer("KEEP", "STRAIGHT", "a" * 2000)) == pytest.approx(0.288250, abs=1e-6)
    assert reasoning_penalty(answer("KEEP", "STRAIGHT", "a")) == pytest.approx(0.3 / (1 + math.exp(0.798)))


def test_reasoning_chars_counts_stripped_think_text_only():
    assert reasoning_chars("<think>  abc \n</think><answer>KEEP, STRAIGHT</answer>") == 3
    assert reasoning_chars("<think>ab</think>x<think>cde</think><answer>KEEP, STRAIGHT</answer>") == 5
    assert reasoning_chars("<think>unclosed<answer>KEEP, STRAIGHT</answer>") == len("unclosed")
    assert reasoning_chars("<think>runaway") == len("runaway")
    assert reasoning_chars(None) == 0


def test_planning_rewards_subtract_penalty_only_when_configured():
    text = answer("KEEP", "STRAIGHT", "a" * 400)
    assert one(text)["length_penalty"] == 0.0
    r = one(text, config=PlanningRewardConfig(reasoning_penalty=ReasoningPenaltyConfig()))
    assert r["length_penalty"] == pytest.approx(0.15)
    assert r["total"] == pytest.approx(2.28 - 0.15)


# ------------------------------------------------------------------------------------ trajectory
SPEC = TrajectorySpec()


def straight(speed=10.0):
    return constant_motion(speed, 0.0, SPEC)


def agent_still_at(x, y, heading=0.0):
    return np.tile([[x, y, heading]], (1, SPEC.num_waypoints, 1))


def test_smooth_on_route_trajectory():
    r = trajectory_reward(straight(), TrajectoryContext(target_speed=10.0))
    assert r["progress_m"] == pytest.approx(30.0)
    assert (r["progress"], r["collision"], r["off_road"], r["comfort"], r["takeover"]) == (1.0, 0, 0, 0, 0)
    assert r["l2"] is None and r["total"] == pytest.approx(1.0)
    assert trajectory_reward(straight(5.0), TrajectoryContext())["progress"] == pytest.approx(0.5)
    assert trajectory_reward(Trajectory(-straight().poses), TrajectoryContext())["progress"] == 0.0


def test_collision_with_agent_in_the_path():
    r = trajectory_reward(straight(), TrajectoryContext(agents=agent_still_at(15.0, 0.0)))
    assert r["collision"] == 1.0
    assert r["total"] == pytest.approx(1.0 - 2.0)
    beside = trajectory_reward(straight(), TrajectoryContext(agents=agent_still_at(15.0, 3.7)))
    assert beside["collision"] == 0.0
    xy_only = TrajectoryContext(agents=agent_still_at(15.0, 0.0)[..., :2])
    assert trajectory_reward(straight(), xy_only)["collision"] == 1.0


def test_collision_uses_agent_box_orientation_and_size():
    crossing = agent_still_at(34.0, 0.0, heading=math.pi / 2)  # ego front 32.5, crossing car spans 33-35
    assert trajectory_reward(straight(), TrajectoryContext(agents=crossing))["collision"] == 0.0
    long_truck = TrajectoryContext(agents=crossing, agent_sizes=[[5.0, 4.0]])  # spans 32-36
    assert trajectory_reward(straight(), long_truck)["collision"] == 1.0


def test_collision_between_waypoints_is_not_missed():
    t = SPEC.times
    oncoming = np.stack([50.0 - 30.0 * t, 0 * t, np.full_like(t, math.pi)], axis=1)[None]
    ctx = TrajectoryContext(agents=oncoming)  # 10 m apart at 1.0 s and 1.5 s, overlapping at 1.2 s
    assert trajectory_reward(straight(), ctx, TrajectoryRewardConfig(collision_substeps=1))["collision"] == 0
    assert trajectory_reward(straight(), ctx)["collision"] == 1.0


def test_absent_agent_is_no_collision():
    agents = agent_still_at(15.0, 0.0)
    agents[0, :, :] = np.nan
    assert trajectory_reward(straight(), TrajectoryContext(agents=agents))["collision"] == 0.0


def test_leaving_the_road():
    curve = constant_motion(10.0, 0.6, SPEC)
    r = trajectory_reward(curve, TrajectoryContext())
    assert r["off_road"] == 1.0 and r["max_lateral_offset_m"] > 3.5
    drift = Trajectory(np.column_stack([SPEC.times * 10, np.linspace(0.5, 3.0, 6), np.zeros(6)]))
    assert trajectory_reward(drift, TrajectoryContext(road_half_width=3.5))["off_road"] == 0.0
    sideways = trajectory_reward(straight(), TrajectoryContext(route_heading=math.pi / 2))
    assert sideways["off_road"] == 1.0 and sideways["progress"] == pytest.approx(0.0, abs=1e-12)


def arc(radius, angles):
    """Exact left-turn arc through the origin: x = R sin a, y = R (1 - cos a), heading a."""
    return np.column_stack([radius * np.sin(angles), radius * (1 - np.cos(angles)), angles])


def test_curved_route_polyline():
    radius = 100.0 / 3.0  # 10 m/s at 0.3 rad/s
    bend = Trajectory(arc(radius, 0.3 * SPEC.times))
    route = arc(radius, np.linspace(0.0, 1.8, 61))[:, :2]  # 1 m chords: sagitta 4 mm
    r = trajectory_reward(bend, TrajectoryContext(route=route))
    assert r["off_road"] == 0.0 and r["max_lateral_offset_m"] < 0.01
    assert r["progress_m"] == pytest.approx(30.0, abs=0.01)
    assert trajectory_reward(bend, TrajectoryContext())["off_road"] == 1.0  # against a straight route


def test_smooth_beats_jerky():
    steps = np.array([5.0, 2.0, 8.0, 2.0, 8.0, 5.0])  # 30 m, speeds 10, 4, 16, 4, 16, 10
    jerky = Trajectory(np.column_stack([np.cumsum(steps), np.zeros(6), np.zeros(6)]))
    ctx = TrajectoryContext(initial_speed=10.0)
    rj, rs = trajectory_reward(jerky, ctx), trajectory_reward(straight(), ctx)
    # accel 0, -12, 24, -24, 24, -12 m/s^2 -> jerk peaks at 96 m/s^3, far over 4.13: comfort cost capped at 1
    assert rj["max_jerk"] == pytest.approx(96.0)
    assert rj["comfort"] == 1.0 and rj["progress"] == 1.0
    assert rj["total"] == pytest.approx(1.0 - 0.2)
    assert rs["total"] > rj["total"]


def test_lateral_acceleration_cost():
    r = trajectory_reward(constant_motion(10.0, 0.6, SPEC), TrajectoryContext(road_half_width=50.0))
    assert r["max_lateral_accel"] == pytest.approx(6.0, abs=0.05)  # v * yaw rate
    assert r["comfort"] == pytest.approx(r["max_lateral_accel"] / 4.89 - 1.0)


def test_agreement_with_driven_future():
    assert trajectory_reward(straight(), TrajectoryContext(driven=straight()))["l2"] == 0.0
    shifted = straight().poses + [0.0, 1.0, 0.0]
    r = trajectory_reward(straight(), TrajectoryContext(driven=shifted))
    assert r["l2"] == pytest.approx(1.0) and r["total"] == pytest.approx(1.0 - 0.1)
    far = trajectory_reward(straight(), TrajectoryContext(driven=shifted[:, :2] + [0.0, 49.0]))
    assert far["l2"] == pytest.approx(50.0) and far["total"] == pytest.approx(1.0 - 0.1 * 10.0)


def test_takeover_is_strongly_negative():
    base = trajectory_reward(straight(), TrajectoryContext())["total"]
    r = trajectory_reward(straight(), TrajectoryContext(takeover=True))
    assert r["takeover"] == 1.0 and r["total"] == pytest.approx(base - 3.0) and r["total"] < 0
    crash = trajectory_reward(straight(), TrajectoryContext(agents=agent_still_at(15.0, 0.0)))
    assert r["total"] < crash["total"]


def test_non_finite_trajectory_scores_worst_case():
    poses = straight().poses.copy()
    poses[3, 0] = np.nan
    r = trajectory_reward(Trajectory(poses), TrajectoryContext())
    assert r["error"] == "non_finite"
    assert r["total"] == pytest.approx(0.0 - 2.0 - 1.0 - 0.2 * 2.0)


def test_bad_context_is_a_clear_error():
    with pytest.raises(ValueError, match="time steps"):
        trajectory_reward(straight(), TrajectoryContext(agents=np.zeros((1, 4, 3))))
    with pytest.raises(ValueError, match="route"):
        TrajectoryContext(route=[[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="driven"):
        TrajectoryContext(driven=np.full((6, 2), np.nan))


# ---------------------------------------------------------------------------------------- advantages
def test_group_advantages_hand_computed():
    adv = group_advantages([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)  # sample std (ddof=1)
    assert adv == pytest.approx(np.array([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4))
    assert adv.mean() == pytest.approx(0.0, abs=1e-12)
    assert adv.std(ddof=1) == pytest.approx(1.0, abs=1e-3)
    half = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert group_advantages([0.0, 1.0]) == pytest.approx([-half, half])


def test_group_advantages_degenerate_and_batched():
    assert group_advantages([2.0, 2.0, 2.0]).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages([5.0]).tolist() == [0.0]
    rows = group_advantages([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 10.0]])
    assert rows[0] == pytest.approx(group_advantages([1.0, 2.0, 3.0, 4.0]))
    assert rows[1].tolist() == [0.0] * 4
    with pytest.raises(ValueError):
        group_advantages([1.0, float("nan")])


def test_advantages_of_a_planning_group_rank_correct_answers_first():
    group = [answer("KEEP", "STRAIGHT"), answer("KEEP", "LEFT_TURN"), "KEEP, STRAIGHT",
             answer("STOP", "STRAIGHT")]
    adv = group_advantages([r["total"] for r in planning_rewards(group, TRUTH)])
    assert adv.argmax() == 0 and adv.argmin() == 2
    assert adv[1] == pytest.approx(adv[3])  # one half right each, equal weights 0.8
