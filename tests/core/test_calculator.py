"""MLPESCalculator (ASE) and its batched Potential: agreement, ensembles, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.models import ModelConfig, build_model, save_model

NH3 = np.array([[0.0, 0.0, 0.12], [0.94, 0.0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]])


def make_model(arch: str = "physnet", seed: int = 0, dtype: str = "float64"):
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(
            architecture=arch, elements=[1, 7], n_features=16, n_rbf=8, n_blocks=2, cutoff=5.0, dtype=dtype
        )
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "output" in name or "head" in name:
                p.normal_(0.0, 0.3)
    model.set_reference([-13.6, -1485.0], 0.8)
    return model


def walkers(b: int, seed: int = 0) -> np.ndarray:
    return NH3[None] + np.random.default_rng(seed).normal(0.0, 0.05, (b, 4, 3))


@pytest.mark.parametrize("arch", ["physnet", "painn"])
def test_ase_calculator_agrees_with_potential(arch):
    calc = MLPESCalculator(make_model(arch))
    pot = calc.as_potential([7, 1, 1, 1])
    pos = walkers(5)
    energies, forces = pot(pos)
    assert energies.shape == (5,) and forces.shape == (5, 4, 3)
    atoms = Atoms("NH3", positions=pos[0])
    atoms.calc = calc
    for b in range(5):
        atoms.positions = pos[b]
        assert atoms.get_potential_energy() == pytest.approx(energies[b], abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces[b], atol=1e-10)
    charges = atoms.get_charges()
    assert charges.sum() == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(atoms.get_dipole_moment(), charges @ atoms.positions, atol=1e-10)
    # energies-only path and chunking give the same numbers
    np.testing.assert_allclose(pot.energies(pos), energies, atol=1e-10)
    chunked = calc.as_potential([7, 1, 1, 1], chunk_size=2)
    e2, f2 = chunked(pos)
    np.testing.assert_allclose(e2, energies, atol=1e-10)
    np.testing.assert_allclose(f2, forces, atol=1e-10)


def test_charge_from_atoms_info(tmp_path):
    calc = MLPESCalculator(save_model(make_model(), tmp_path / "m.pt"))
    atoms = Atoms("NH3", positions=NH3)
    atoms.info["charge"] = 1
    atoms.calc = calc
    assert atoms.get_charges().sum() == pytest.approx(1.0)
    cation = calc.as_potential(atoms.numbers, charge=1)(NH3[None])[0][0]
    assert atoms.get_potential_energy() == pytest.approx(cation, abs=1e-10)


def test_ensemble_std(tmp_path):
    same = [save_model(make_model(seed=1), tmp_path / f"same{i}.pt") for i in range(3)]
    calc = MLPESCalculator(same)
    atoms = Atoms("NH3", positions=NH3)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.results["energy_std"] == 0.0
    assert np.all(calc.results["forces_std"] == 0.0)
    pot = calc.as_potential([7, 1, 1, 1], return_std=True)
    _, _, std = pot(walkers(4))
    assert np.all(std == 0.0) and np.all(pot.uncertainty(walkers(4)) == 0.0)

    different = MLPESCalculator([make_model(seed=1), make_model(seed=2)])
    atoms.calc = different
    energy = atoms.get_potential_energy()
    members = [MLPESCalculator(make_model(seed=s)).as_potential([7, 1, 1, 1])(NH3[None]) for s in (1, 2)]
    assert energy == pytest.approx(0.5 * (members[0][0][0] + members[1][0][0]), abs=1e-10)
    assert different.results["energy_std"] == pytest.approx(0.5 * abs(members[0][0][0] - members[1][0][0]))
    out = different.as_potential([7, 1, 1, 1]).evaluate(NH3[None])
    assert out["energy_std"][0] == pytest.approx(different.results["energy_std"])
    np.testing.assert_allclose(out["forces_std"][0], different.results["forces_std"], atol=1e-12)


def test_potential_rejects_bad_input():
    calc = MLPESCalculator(make_model())
    with pytest.raises(ValueError, match=r"C \(Z=6\)"):
        calc.as_potential([6, 1, 1, 1])
    atoms = Atoms("CH4", positions=np.zeros((5, 3)) + np.arange(5)[:, None])
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"C \(Z=6\)"):
        atoms.get_potential_energy()
    pot = calc.as_potential([7, 1, 1, 1])
    with pytest.raises(ValueError, match="expected"):
        pot(np.zeros((2, 3, 3)))
    bad = walkers(3)
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"\[1\]"):
        pot(bad)


def test_float32_model_close_to_float64():
    m64 = make_model(dtype="float64")
    m32 = make_model(dtype="float32")
    m32.load_state_dict(m64.state_dict())
    pos = walkers(8)
    e64, f64 = MLPESCalculator(m64).as_potential([7, 1, 1, 1])(pos)
    e32, f32 = MLPESCalculator(m32).as_potential([7, 1, 1, 1])(pos)
    np.testing.assert_allclose(e32, e64, atol=1e-4)
    np.testing.assert_allclose(f32, f64, atol=1e-4)
    assert e32.dtype == np.float64


@pytest.mark.parametrize("charge", [0, 1])
def test_numpy_engine_equals_torch_path(charge):
    calc = MLPESCalculator(make_model(seed=3))
    pos = walkers(6, seed=4)
    numpy_pot = calc.as_potential([7, 1, 1, 1], charge=charge)
    torch_pot = calc.as_potential([7, 1, 1, 1], charge=charge, use_numpy=False)
    assert numpy_pot._numpy[0] is not None and torch_pot._numpy[0] is None
    a, b = numpy_pot.run_chunk(0, pos), torch_pot.run_chunk(0, pos)
    assert set(a) == set(b) == {"energy", "forces", "atomic_charges", "dipole"}
    for key in a:
        # torch's softplus is linear above 20 (error ~2e-9); numpy evaluates log1p(exp(x)) throughout
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(numpy_pot.energies(pos), torch_pot.energies(pos), rtol=0, atol=1e-7)
    # weights changed in place are picked up
    with torch.no_grad():
        calc.models[0].blocks[0].dense_update.bias.add_(0.1)
    np.testing.assert_allclose(numpy_pot(pos)[0], torch_pot(pos)[0], rtol=0, atol=1e-7)
    assert abs(numpy_pot(pos)[0][0] - a["energy"][0]) > 1e-6
    # writes through .data bypass the version counter: refresh() re-reads the weights
    calc.models[0].blocks[0].dense_update.bias.data.add_(0.1)
    numpy_pot.refresh()
    np.testing.assert_allclose(numpy_pot(pos)[0], torch_pot(pos)[0], rtol=0, atol=1e-7)


def test_numpy_engine_overflow_falls_back_to_torch():
    model = make_model(seed=5, dtype="float32")
    with torch.no_grad():
        model.embedding.mul_(1e3)  # pre-activations far beyond float32 exp's range
    calc = MLPESCalculator(model)
    e_numpy, f_numpy = calc.as_potential([7, 1, 1, 1])(walkers(2))
    e_torch, f_torch = calc.as_potential([7, 1, 1, 1], use_numpy=False)(walkers(2))
    np.testing.assert_array_equal(e_numpy, e_torch)
    np.testing.assert_array_equal(f_numpy, f_torch)


def test_thread_count_is_a_rule(monkeypatch):
    from aiida_mlpes.core.threads import ATOMS_PER_THREAD, job_cores, threads_for

    assert threads_for(4, 8) == 1
    assert threads_for(ATOMS_PER_THREAD - 1, 8) == 1
    assert threads_for(2 * ATOMS_PER_THREAD, 8) == 2
    assert threads_for(100 * ATOMS_PER_THREAD, 3) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert job_cores() == 2  # OpenMP's own setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert job_cores() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "many")
    with pytest.raises(ValueError, match="SLURM_CPUS_PER_TASK"):
        job_cores()
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert job_cores() >= 1

    pot = MLPESCalculator(make_model()).as_potential([7, 1, 1, 1])
    big = 10 * ATOMS_PER_THREAD // 4
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pot.threads(big) == 1  # torch.set_num_threads means what it says
        torch.set_num_threads(2)
        assert pot.threads(big) == min(2, job_cores())
        assert pot.threads(1) == 1
    finally:
        torch.set_num_threads(previous)
    explicit = MLPESCalculator(make_model()).as_potential([7, 1, 1, 1], num_threads=3)
    assert explicit.threads(big) == 3 and explicit.threads(1) == 1
    with pytest.raises(ValueError, match="num_threads"):
        MLPESCalculator(make_model()).as_potential([7, 1, 1, 1], num_threads=0)
