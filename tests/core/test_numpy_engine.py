"""The numpy latency engine (models/fast_numpy.py) against the PhysNet definition, over every ModelConfig option.

The engine is a second implementation of PhysNet kept for speed (one NH3: 3-4x faster than the PyTorch
definition, docs/models.md); it must give the definition's numbers for every configuration it accepts, in
both dtypes, and decline every configuration it does not implement (the potential then uses the definition).
Tolerances (absolute; energies eV, forces eV/A, charges e, dipoles e*A): float64 1e-7 (torch's softplus is
linear above 20, numpy's is not: ~2e-9), float32 2e-4 (single-precision rounding of two different operation
orders on outputs of order 1-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_mlpes.core.calculator import MLPotential
from aiida_mlpes.core.models import ModelConfig, build_model
from aiida_mlpes.core.models.fast_numpy import NumpyPhysNet

TOLERANCE = {"float64": 1e-7, "float32": 2e-4}
NH3 = np.array([[0.0, 0.0, 0.12], [0.94, 0.0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]])
H2CO = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.21], [0.0, 0.94, -0.59], [0.0, -0.94, -0.59]])

#: every ModelConfig option (PhysNet), each varied from a small model; None marks configurations the engine
#: must decline
OPTION_SETS = [
    ({}, True),
    ({"predict_charges": False}, True),
    ({"electrostatics": False}, True),
    ({"charge_embedding": False}, True),
    ({"short_range_cutoff": 2.5}, True),
    ({"cutoff": 1.3}, True),  # pairs beyond the cutoff
    ({"n_blocks": 1, "n_rbf": 3, "n_features": 5}, True),
    ({"n_residual_interaction": 0, "n_residual_atomic": 3, "n_residual_output": 0}, True),
    ({"all_pairs_max_atoms": 2}, True),  # the definition then uses a vesin neighbour list
    ({"activation": "silu"}, False),
    ({"dispersion": True}, False),
]


def make_model(dtype: str, options: dict, architecture: str = "physnet"):
    torch.manual_seed(3)
    config = {"n_features": 12, "n_rbf": 6, "n_blocks": 2, "cutoff": 5.0, **options}
    model = build_model(ModelConfig(architecture=architecture, elements=[1, 6, 7, 8], dtype=dtype, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "output" in name or "charge_vector" in name or "gate" in name:
                p.normal_(0.0, 0.4)
    model.set_reference([-13.6, -1030.0, -1485.0, -2040.0], 0.8)
    return model.eval()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "options, supported", OPTION_SETS, ids=lambda o: ",".join(o) if isinstance(o, dict) else ""
)
@pytest.mark.parametrize("charge", [0.0, 1.0])
def test_numpy_engine_equals_definition(options, supported, dtype, charge):
    model = make_model(dtype, options)
    assert NumpyPhysNet.supports(model) == supported
    tol = TOLERANCE[dtype]
    rng = np.random.default_rng(5)
    for numbers, geometry in (([7, 1, 1, 1], NH3), ([6, 8, 1, 1], H2CO)):
        pos = geometry + rng.normal(0.0, 0.06, (5, 4, 3))
        with_engine = MLPotential([model], numbers, charge=charge, use_numpy=True)
        definition = MLPotential([model], numbers, charge=charge, use_numpy=False)
        assert (with_engine._numpy[0] is not None) == supported
        assert definition._numpy[0] is None
        a, b = with_engine.run_chunk(0, pos), definition.run_chunk(0, pos)
        assert set(a) == set(b)
        for key in b:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=tol, err_msg=key)
        energies = with_engine.run_chunk(0, pos, forces=False)
        assert "forces" not in energies
        np.testing.assert_allclose(energies["energy"], b["energy"], rtol=0, atol=tol)


def test_painn_is_not_accepted():
    assert not NumpyPhysNet.supports(make_model("float64", {}, architecture="painn"))
