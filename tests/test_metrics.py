"""Continual-learning metrics against matrices and curves computed by hand."""

from __future__ import annotations

import math

import pytest

from blip_rl import metrics

# R[i][j]: return on game j after training game i (three games).
R = [
    [10.0, 1.0, 0.0],
    [6.0, 20.0, 2.0],
    [8.0, 5.0, 30.0],
]


def test_average_final() -> None:
    assert metrics.average_final(R) == pytest.approx((8 + 5 + 30) / 3)
    # A run that stopped after two games: the mean of its last row (every game evaluated).
    assert metrics.average_final(R[:2]) == pytest.approx((6 + 20 + 2) / 3)


def test_forgetting_is_best_earlier_minus_final() -> None:
    per, avg = metrics.forgetting(R)
    # game 0: max(R[0][0], R[1][0]) - R[2][0] = 10 - 8; game 1: R[1][1] - R[2][1] = 20 - 5.
    assert per == {0: pytest.approx(2.0), 1: pytest.approx(15.0)}
    assert avg == pytest.approx(8.5)
    assert metrics.forgetting_after(R, 1) == {0: pytest.approx(4.0)}
    # Evaluations before a game was learned do not count as "best": R[0][1] = 1 is ignored.
    assert metrics.forgetting_after([[0.0, 50.0], [0.0, 3.0]], 1) == {0: 0.0}
    # Improvement after learning gives negative forgetting.
    assert metrics.forgetting([[1.0, 0.0], [4.0, 2.0]])[1] == pytest.approx(-3.0)


def test_backward_transfer() -> None:
    # ((8 - 10) + (5 - 20)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-8.5)
    assert math.isnan(metrics.backward_transfer(R[:1]))


def test_forward_transfer_gem() -> None:
    # ((R[0][1] - 0.5) + (R[1][2] - 1)) / 2 = (0.5 + 1) / 2
    assert metrics.forward_transfer(R, [0.0, 0.5, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.forward_transfer(R, [0.0])


def test_matrix_metrics_bundle() -> None:
    m = metrics.matrix_metrics(R)
    assert m["average_final"] == pytest.approx(43 / 3)
    assert m["forgetting"][:2] == [pytest.approx(2.0), pytest.approx(15.0)]
    assert math.isnan(m["forgetting"][2])
    assert m["average_forgetting"] == pytest.approx(8.5)
    assert m["backward_transfer"] == pytest.approx(-8.5)


def test_normalize() -> None:
    norm = metrics.normalize(R, [(0.0, 10.0), (1.0, 21.0), None])
    assert norm[0][0] == pytest.approx(1.0) and norm[2][0] == pytest.approx(0.8)
    assert norm[1][1] == pytest.approx((20 - 1) / 20) and norm[0][1] == pytest.approx(0.0)
    assert all(math.isnan(row[2]) for row in norm)
    # The same metrics apply to the normalized matrix.
    per, _ = metrics.forgetting(norm)
    assert per[1] == pytest.approx((19 - 4) / 20)
    with pytest.raises(ValueError):
        metrics.normalize(R, [None])


def test_curve_auc_by_hand() -> None:
    # Trapezoids: (0+10)/2*10 + (10+10)/2*10 = 150 over a range of 20.
    assert metrics.curve_auc([0, 10, 20], [0, 10, 10]) == pytest.approx(7.5)
    assert metrics.curve_auc([20, 0, 10], [10, 0, 10]) == pytest.approx(7.5)  # any order
    assert metrics.curve_auc([5], [3.0]) == 3.0
    assert math.isnan(metrics.curve_auc([], []))


ROWS = [
    # global_step, game_index, game, return, normalized ("" = no reference score)
    {"global_step": 50, "game_index": 0, "game": "a", "return": 2.0, "normalized": 0.2},
    {"global_step": 50, "game_index": 0, "game": "b", "return": 0.0, "normalized": ""},
    {"global_step": 100, "game_index": 0, "game": "a", "return": 4.0, "normalized": 0.4},
    {"global_step": 100, "game_index": 0, "game": "b", "return": 1.0, "normalized": ""},
    {"global_step": 150, "game_index": 1, "game": "a", "return": 4.0, "normalized": 0.4},
    {"global_step": 150, "game_index": 1, "game": "b", "return": 3.0, "normalized": ""},
    {"global_step": 200, "game_index": 1, "game": "a", "return": 0.0, "normalized": 0.0},
    {"global_step": 200, "game_index": 1, "game": "b", "return": 5.0, "normalized": ""},
]


def test_auc_per_game_from_eval_rows() -> None:
    auc = metrics.auc_per_game(ROWS)
    # a: trapezoids over [50, 200]: (2+4)/2*50 + (4+4)/2*50 + (4+0)/2*50 = 450 -> 450/150 = 3
    assert auc["a"] == pytest.approx(3.0)
    # b: (0+1)/2*50 + (1+3)/2*50 + (3+5)/2*50 = 325 -> 325/150
    assert auc["b"] == pytest.approx(325 / 150)
    norm = metrics.auc_per_game(ROWS, "normalized")
    assert norm == {"a": pytest.approx(0.3)}  # b has no normalized values


def test_training_curve_and_forward_transfer() -> None:
    xs, ys = metrics.training_curve(ROWS, "b", position=1, steps_per_game=100)
    assert xs == [0.5, 1.0] and ys == [3.0, 5.0]
    ref = ([0.5, 1.0], [1.0, 1.0])
    # AUC while training in the sequence (4) minus AUC from scratch (1).
    assert metrics.forward_transfer_auc((xs, ys), ref) == pytest.approx(3.0)
    assert math.isnan(metrics.forward_transfer_auc(([], []), ref))


def test_bad_matrix_shape() -> None:
    with pytest.raises(ValueError):
        metrics.average_final([[1.0], [2.0]])  # more rows than games
