"""The refinement loop's stopping rule and its typed settings (aiida_mlpes.core.convergence)."""

from __future__ import annotations

import math

import pytest

from aiida_mlpes.core.convergence import (
    LoopSettings,
    assess_iteration,
    frequency_rmse,
    plot_convergence,
)


def good_record(iteration=2, **changes):
    record = {
        "iteration": iteration,
        "dmc": {"outcome": "completed", "n_holes": 0, "zpe": 0.900, "zpe_error": 0.001},
        "new_labels": {"n": 40, "energy_mae": 0.004, "forces_mae": 0.05},
        "frequencies": [1000.0, 1600.0, 1600.0, 3400.0],
        "barrier": None,
        "validation": {"reference_max_force": 0.01, "frequency_rmse": 4.0, "frequencies_validated": True},
    }
    record.update(changes)
    return record


def test_converges_only_when_every_criterion_holds():
    settings = LoopSettings()
    verdict = assess_iteration(good_record(), good_record(1), settings)
    assert verdict["converged"], verdict
    assert list(verdict["criteria"]) == ["dmc", "new_labels", "stability", "reference"]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"dmc": {"outcome": "completed", "n_holes": 3, "zpe": 0.9, "zpe_error": 0.001}}, "dmc"),
        ({"dmc": {"outcome": "drift", "n_holes": 0, "zpe": 0.9, "zpe_error": 0.001}}, "dmc"),
        ({"dmc": {"outcome": "collapsed", "n_holes": 0, "zpe": None, "zpe_error": None}}, "dmc+stability"),
        ({"new_labels": {"n": 40, "energy_mae": 0.05, "forces_mae": 0.05}}, "new_labels"),
        ({"new_labels": {"n": 40, "energy_mae": 0.001, "forces_mae": 0.5}}, "new_labels"),
        ({"new_labels": {"n": 0}}, "new_labels"),
        ({"frequencies": [1000.0, 1600.0, 1600.0, 3420.0]}, "stability"),
        ({"dmc": {"outcome": "completed", "n_holes": 0, "zpe": 0.95, "zpe_error": 0.001}}, "stability"),
        (
            {
                "validation": {
                    "reference_max_force": 0.2,
                    "frequency_rmse": 4.0,
                    "frequencies_validated": True,
                }
            },
            "reference",
        ),
        (
            {
                "validation": {
                    "reference_max_force": 0.01,
                    "frequency_rmse": 25.0,
                    "frequencies_validated": True,
                }
            },
            "reference",
        ),
        ({"validation": {}}, "reference"),
    ],
)
def test_each_criterion_can_block(change, failing):
    verdict = assess_iteration(good_record(**change), good_record(1), LoopSettings())
    assert not verdict["converged"]
    assert [name for name, c in verdict["criteria"].items() if not c["passed"]] == failing.split("+")


def test_first_iteration_cannot_pass_stability():
    verdict = assess_iteration(good_record(1), None, LoopSettings())
    assert not verdict["criteria"]["stability"]["passed"]
    assert "no previous iteration" in verdict["criteria"]["stability"]["reason"]


def test_zpe_change_within_its_statistical_error_is_stable():
    noisy = {"outcome": "completed", "n_holes": 0, "zpe": 0.906, "zpe_error": 0.002}
    verdict = assess_iteration(good_record(dmc=noisy), good_record(1), LoopSettings())
    assert verdict["criteria"]["stability"]["passed"]  # 6 meV < 3 meV + 2 * sqrt(2^2 + 1^2) meV


def test_barrier_is_tracked_when_a_ts_is_given():
    settings = LoopSettings()
    now = good_record(barrier=0.250, validation={"reference_max_force": 0.01, "barrier_error": 0.002})
    before = good_record(1, barrier=0.2505)
    assert assess_iteration(now, before, settings)["converged"]
    moved = good_record(barrier=0.270, validation={"reference_max_force": 0.01, "barrier_error": 0.002})
    assert not assess_iteration(moved, before, settings)["criteria"]["stability"]["passed"]
    wrong = good_record(barrier=0.250, validation={"reference_max_force": 0.01, "barrier_error": -0.03})
    assert not assess_iteration(wrong, before, settings)["criteria"]["reference"]["passed"]


def test_non_finite_values_never_pass():
    record = good_record(new_labels={"n": 3, "energy_mae": math.nan, "forces_mae": 0.01})
    assert not assess_iteration(record, good_record(1), LoopSettings())["criteria"]["new_labels"]["passed"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"committee_size": 1}, r"settings.committee_size: Input should be greater than or equal to 2"),
        (
            {"tolerances": {"energy_mea": 0.1}},
            r"settings.tolerances.energy_mea: Extra inputs are not permitted",
        ),
        ({"max_iteration": 3}, r"settings.max_iteration: Extra inputs"),
        (
            {"tolerances": {"frequency_rmse": -1}},
            r"settings.tolerances.frequency_rmse: Input should be greater than 0",
        ),
        ({"min_iterations": 5, "max_iterations": 3}, "min_iterations .5. exceeds max_iterations .3."),
        ({"retraining": "sometimes"}, r"settings.retraining"),
    ],
)
def test_bad_settings_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        LoopSettings.from_dict(data)


def test_settings_document_every_knob():
    for name, field in LoopSettings.model_fields.items():
        assert field.description, name


def test_frequency_rmse_compares_sorted_values():
    assert frequency_rmse([3.0, 1.0], [1.0, 5.0]) == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match="2 model frequencies vs 3"):
        frequency_rmse([1.0, 2.0], [1.0, 2.0, 3.0])


def test_convergence_plot(tmp_path):
    records = [good_record(1), {**good_record(2), "converged": True, "test": {"energy": {"mae": 0.003}}}]
    path = plot_convergence(records, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert plot_convergence([], tmp_path / "empty.png").is_file()
