"""Physics of the PhysNet and PaiNN models: forces, invariances, charges, dipoles, neighbour lists."""

from __future__ import annotations

import numpy as np
import pytest
import tad_dftd3
import torch

from aiida_mlpes.core.models import ModelConfig, build_model, collate
from aiida_mlpes.core.models.neighbors import all_pairs, radius_pairs
from aiida_mlpes.core.models.pairs import PairGeometry
from aiida_mlpes.core.ragged import RaggedArrays

NH3 = np.array([[0.0, 0.0, 0.12], [0.94, 0.0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]])
ARCHS = ["physnet", "painn"]


def small_model(arch: str, dtype: str = "float64", seed: int = 0, **kwargs):
    """A small model whose (normally zero-initialised) outputs are randomised so everything is non-trivial."""
    torch.manual_seed(seed)
    options = {"n_features": 16, "n_rbf": 8, "n_blocks": 2, "cutoff": 5.0, **kwargs}
    model = build_model(ModelConfig(architecture=arch, elements=[1, 6, 7, 8], dtype=dtype, **options))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "output" in name or "head" in name or "charge_vector" in name:
                p.normal_(0.0, 0.3)
    model.set_reference([-13.0, -1030.0, -1480.0, -2040.0], 0.7)
    return model


def molecules(rng: np.random.Generator, n: int = 3) -> RaggedArrays:
    """NH3, a distorted CH3OH-like molecule and a water: ragged sizes, mixed elements."""
    mols = [
        ([7, 1, 1, 1], NH3),
        ([6, 8, 1, 1, 1, 1], rng.normal(0, 0.9, (6, 3))),
        ([8, 1, 1], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], float)),
    ][:n]
    return RaggedArrays(
        n_atoms=[len(z) for z, _ in mols],
        atomic_numbers=np.concatenate([z for z, _ in mols]),
        positions=np.concatenate([p + rng.normal(0, 0.05, p.shape) for _, p in mols]),
        charge=np.array([0.0, 1.0, -1.0])[:n],
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_forces_are_minus_energy_gradient(arch):
    model = small_model(arch)
    arrays = molecules(np.random.default_rng(1))
    batch = collate(arrays, dtype=torch.float64)
    forces = model(batch)["forces"].numpy()
    h = 1e-5
    rng = np.random.default_rng(2)
    for atom in rng.choice(len(arrays.positions), 5, replace=False):
        for axis in range(3):
            shifted = []
            for sign in (1, -1):
                b = dict(batch)
                b["positions"] = batch["positions"].clone()
                b["positions"][atom, axis] += sign * h
                shifted.append(model(b, compute_forces=False)["energy"].sum().item())
            numeric = -(shifted[0] - shifted[1]) / (2 * h)
            assert forces[atom, axis] == pytest.approx(numeric, abs=1e-6, rel=1e-5)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


@pytest.mark.parametrize("arch", ARCHS)
def test_rotation_translation_permutation(arch):
    model = small_model(arch)
    rng = np.random.default_rng(3)
    arrays = molecules(rng)
    ref = model(collate(arrays, dtype=torch.float64))
    rot = random_rotation(rng)
    moved = RaggedArrays(
        arrays.n_atoms,
        arrays.atomic_numbers,
        arrays.positions @ rot.T + [3.0, -2.0, 7.5],
        charge=arrays.charge,
    )
    out = model(collate(moved, dtype=torch.float64))
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces"], ref["forces"].numpy() @ rot.T, atol=1e-9)
    np.testing.assert_allclose(out["atomic_charges"], ref["atomic_charges"], atol=1e-10)
    # permute atoms inside each molecule
    perm = np.concatenate(
        [o + rng.permutation(n) for o, n in zip(arrays.offsets[:-1], arrays.n_atoms, strict=True)]
    )
    permuted = RaggedArrays(
        arrays.n_atoms, arrays.atomic_numbers[perm], arrays.positions[perm], charge=arrays.charge
    )
    out = model(collate(permuted, dtype=torch.float64))
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=1e-9)
    np.testing.assert_allclose(out["dipole"], ref["dipole"], atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_charges_sum_to_total_and_dipole(arch):
    model = small_model(arch)
    arrays = molecules(np.random.default_rng(4))
    out = model(collate(arrays, dtype=torch.float64))
    q = out["atomic_charges"].numpy()
    assert np.abs(q).max() > 1e-3  # non-trivial charges
    for m in range(len(arrays)):
        sl = arrays.atom_slice(m)
        assert q[sl].sum() == pytest.approx(arrays.charge[m], abs=1e-12)
        np.testing.assert_allclose(out["dipole"][m], q[sl] @ arrays.positions[sl], atol=1e-12)


def test_total_charge_is_an_input():
    model = small_model("physnet")
    arrays = molecules(np.random.default_rng(5), n=1)
    neutral = model(collate(arrays, dtype=torch.float64))
    arrays.charge = np.array([1.0])
    cation = model(collate(arrays, dtype=torch.float64))
    assert abs(float(cation["energy"][0] - neutral["energy"][0])) > 1e-4
    assert float(cation["atomic_charges"].sum()) == pytest.approx(1.0)


def test_reference_energies_added_in_float64():
    model = small_model("physnet", dtype="float32")
    assert model.element_energies.dtype == torch.float64
    model.double().float()  # dtype conversions keep the float64 references
    assert model.element_energies.dtype == torch.float64
    arrays = molecules(np.random.default_rng(6), n=1)
    batch = collate(arrays)
    e0 = model(batch)["energy"]
    model.set_reference([-13.0 - 1e5, -1030.0, -1480.0 - 1e5, -2040.0], 0.7)
    e1 = model(batch)["energy"]
    assert e1.dtype == torch.float64
    # 4e5 eV added exactly: float32 would lose ~0.03 eV here
    assert float(e1[0] - e0[0]) == pytest.approx(-4e5, abs=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_vesin_pairs_give_same_result_as_all_pairs(arch):
    arrays = molecules(np.random.default_rng(7))
    batch = collate(arrays, dtype=torch.float64)
    dense = small_model(arch, seed=8)(batch)
    sparse = small_model(arch, seed=8, all_pairs_max_atoms=0)(batch)
    np.testing.assert_allclose(sparse["energy"], dense["energy"], atol=1e-10)
    np.testing.assert_allclose(sparse["forces"], dense["forces"], atol=1e-10)


@pytest.mark.parametrize("n_rbf", [32, 64])
def test_radial_basis_exponent_floor_changes_nothing_measurable(n_rbf):
    """The exp-normal basis floors its exponents (layers.EXP_FLOOR, for speed): values and gradients agree
    with the unfloored formula to 1e-30 over 0.3-8 Angstrom, and some exponents really are floored."""
    from aiida_mlpes.core.models.layers import EXP_FLOOR, ExpNormalRBF, polynomial_cutoff

    rbf = ExpNormalRBF(n_rbf, 8.0).double()
    r = torch.linspace(0.3, 8.0, 400, dtype=torch.float64, requires_grad=True)
    diff = torch.exp(-r).unsqueeze(-1) - rbf.centers
    exponent = -rbf.widths * diff * diff
    assert bool((exponent < EXP_FLOOR).any())  # the floor is exercised
    exact = polynomial_cutoff(r, 8.0).unsqueeze(-1) * torch.exp(exponent)
    floored = rbf(r)
    torch.testing.assert_close(floored, exact, rtol=0.0, atol=1e-30)
    (g_exact,) = torch.autograd.grad(exact.sum(), r)
    (g_floored,) = torch.autograd.grad(rbf(r).sum(), r)
    torch.testing.assert_close(g_floored, g_exact, rtol=0.0, atol=1e-30)


def test_pair_lists():
    i, j = all_pairs(torch.tensor([3, 1, 2]))
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (4, 5), (5, 4)}
    i2, j2 = all_pairs(torch.tensor([3, 3]))
    assert set(zip(i2.tolist(), j2.tolist(), strict=True)) == {
        (a + o, b + o) for o in (0, 3) for a in range(3) for b in range(3) if a != b
    }
    # vesin: a 3-atom chain with a 2.5 A cutoff keeps only neighbours, and never mixes molecules
    pos = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [4.0, 0, 0], [0.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    i, j = radius_pairs(pos, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([3, 2]), 2.5)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)}


def test_unseen_element_raises():
    model = small_model("physnet")
    arrays = RaggedArrays([2], [9, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"F \(Z=9\)"):
        model(collate(arrays))


def test_collate_selects_conformations():
    arrays = molecules(np.random.default_rng(9))
    arrays.energy = np.array([1.0, 2.0, 3.0])
    batch = collate(arrays, [2, 0], pairs=True)
    assert batch["n_atoms"].tolist() == [3, 4]
    assert batch["atomic_numbers"].tolist() == [8, 1, 1, 7, 1, 1, 1]
    assert batch["batch"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(batch["positions"][3:], arrays.positions[:4], atol=1e-6)
    assert batch["energy"].dtype == torch.float64 and batch["energy"].tolist() == [3.0, 1.0]
    assert batch["charge"].tolist() == [-1.0, 0.0]
    assert len(batch["idx_i"]) == 3 * 2 + 4 * 3


#: every ModelConfig option that changes the computed function, each varied from the small model
OPTION_SETS = [
    {},
    {"activation": "silu"},
    {"activation": "shifted_softplus"},
    {"predict_charges": False},
    {"electrostatics": False},
    {"charge_embedding": False},
    {"short_range_cutoff": 3.0},
    {"cutoff": 1.2},  # some pairs beyond the cutoff
    {"n_blocks": 1, "n_rbf": 3},
    {"n_residual_interaction": 1, "n_residual_atomic": 0, "n_residual_output": 2},
    {"dispersion": True},
]
#: dense vs sparse layout: same function, different summation order (eV, eV/A, e, e*A; absolute)
LAYOUT_TOLERANCE = {"float64": 1e-10, "float32": 5e-5}


def nh3_batches(dtype: torch.dtype, b: int = 3) -> tuple[dict, dict]:
    """b NH3 geometries (one molecule: dense layout) and the same plus a water (mixed: sparse layout)."""
    rng = np.random.default_rng(11)
    n_atoms = [4] * b + [3]
    numbers = [7, 1, 1, 1] * b + [8, 1, 1]
    positions = np.concatenate([NH3 + rng.normal(0, 0.08, (4, 3)) for _ in range(b)] + [NH3[:3]])
    mixed = RaggedArrays(n_atoms, numbers, positions, charge=np.array([*[0.0, 1.0, -1.0, 0.0][:b], 0.0]))
    return collate(mixed, np.arange(b), dtype=dtype), collate(mixed, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("arch", ARCHS)
def test_dense_and_sparse_layouts_agree(arch, options, dtype):
    """One molecule batched (dense (B, n, n) layout) gives what the flat pair list gives (sparse layout):
    energies, forces, charges, dipoles, and the parameter gradients of a force loss (double backward)."""
    model = small_model(arch, dtype=dtype, **options)
    torch_dtype = model.dtype
    dense_batch, sparse_batch = nh3_batches(torch_dtype)
    geometry = PairGeometry(dense_batch["positions"], dense_batch["batch"], dense_batch["n_atoms"], 5.0, 64)
    assert geometry.dense
    assert not PairGeometry(
        sparse_batch["positions"], sparse_batch["batch"], sparse_batch["n_atoms"], 5.0, 64
    ).dense
    tol = LAYOUT_TOLERANCE[dtype]
    dense, sparse = model(dense_batch), model(sparse_batch)
    n = len(dense_batch["positions"])
    assert set(dense) == set(sparse)
    for key in dense:
        cut = n if key in ("forces", "atomic_charges") else len(dense_batch["n_atoms"])
        np.testing.assert_allclose(
            dense[key].numpy(), sparse[key][:cut].numpy(), rtol=0, atol=tol, err_msg=key
        )
    with torch.no_grad():
        energies = model(dense_batch, compute_forces=False)["energy"]
    np.testing.assert_allclose(energies.numpy(), dense["energy"].numpy(), rtol=0, atol=1e-12)
    if dtype == "float64":
        grads = []
        for batch, cut in ((dense_batch, n), (sparse_batch, n)):
            model.zero_grad()
            forces = model(batch, create_graph=True)["forces"][:cut]
            (forces * forces).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_d3_dispersion_optional():
    plain = small_model("physnet", seed=11)
    disp = small_model("physnet", seed=11, dispersion=True)
    disp.load_state_dict(plain.state_dict())
    arrays = molecules(np.random.default_rng(12))
    batch = collate(arrays, dtype=torch.float64)
    out_plain, out_disp = plain(batch), disp(batch)
    delta = (out_disp["energy"] - out_plain["energy"]).numpy()
    # direct tad-dftd3 call on the first molecule (NH3), bohr/hartree inside
    from ase.units import Bohr, Hartree
    from tad_dftd3.param import get_functional_params

    sl = arrays.atom_slice(0)
    param = get_functional_params("pbe", damping="bj", dtype=torch.float64)
    ref = (
        tad_dftd3.dftd3(
            torch.tensor(arrays.atomic_numbers[sl]), torch.tensor(arrays.positions[sl] / Bohr), param
        ).sum()
        * Hartree
    )
    assert delta[0] == pytest.approx(float(ref), rel=1e-10)
    assert np.all(delta < 0) and np.all(delta > -0.5)  # attractive, tens of meV for small molecules
    # forces still minus the gradient (autograd path) with dispersion on
    h, atom = 1e-5, 1
    energies = []
    for sign in (1, -1):
        b = dict(batch)
        b["positions"] = batch["positions"].clone()
        b["positions"][atom, 2] += sign * h
        energies.append(disp(b, compute_forces=False)["energy"].sum().item())
    assert out_disp["forces"][atom, 2].item() == pytest.approx(
        -(energies[0] - energies[1]) / (2 * h), abs=1e-6
    )


def test_dispersion_unknown_functional():
    with pytest.raises(ValueError, match="dispersion_functional"):
        small_model("physnet", dispersion=True, dispersion_functional="no-such-functional")
