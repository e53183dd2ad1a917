"""TorchScript export (core/models/export.py): the exported module reproduces MLPESCalculator for PhysNet,
PaiNN and a committee (the mean), on NH3 and methanol, and runs in a Python that has only torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.models import Committee, ModelConfig, build_model, save_model
from aiida_mlpes.core.models.export import export_torchscript, exported_info, load_exported
from aiida_mlpes.core.units import KJ_PER_MOL

SMALL = {"n_features": 16, "n_rbf": 8, "n_blocks": 2, "cutoff": 5.0, "dtype": "float64"}
ELEMENTS = [1, 6, 7, 8]


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """An untrained model with every parameter nudged (zero-initialised output layers would give flat
    energies), and reference energies set, so energies and forces are far from trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    references = {1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0}  # eV, roughly GFN2-like magnitudes
    model.set_reference([references[z] for z in model.config.elements], 0.7)
    return model.eval()


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "committee":
        config = ModelConfig(architecture="physnet", elements=ELEMENTS, **SMALL)
        return perturbed(Committee.from_config(config, 3, seed=seed), seed)
    return perturbed(build_model(ModelConfig(architecture=kind, elements=ELEMENTS, **SMALL)), seed)


def distorted(name: str, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        out.append(atoms)
    return out


@pytest.mark.parametrize("kind", ["physnet", "painn", "committee"])
@pytest.mark.parametrize("name", ["NH3", "CH3OH"])
def test_export_matches_calculator(kind, name):
    model = make_model(kind)
    images = distorted(name, 3, seed=1)
    module = export_torchscript(model, images[0].numbers)
    calc = MLPESCalculator(model)
    worst = 0.0
    for atoms in images:
        atoms.calc = calc
        energy, forces = module(torch.as_tensor(atoms.positions))
        assert not energy.requires_grad and not forces.requires_grad  # plain results, call after call
        reference = atoms.get_forces()
        assert np.abs(reference).max() > 0.05  # forces that matter, so the comparison can fail
        assert float(energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        worst = max(worst, float(np.abs(forces.numpy() - reference).max()))
    assert worst < 1e-4  # eV/Angstrom, float64 (issue 13); measured ~1e-14


def test_exported_file_runs_with_torch_alone(tmp_path):
    """The saved module loads and runs in a fresh Python where importing aiida_mlpes (or ASE) is impossible."""
    model = make_model("painn", seed=2)
    atoms = distorted("CH3OH", 1, seed=3)[0]
    path = tmp_path / "methanol.pt"
    export_torchscript(model, atoms.numbers, path, units="openmm")
    script = (
        "import json, sys\n"
        "sys.modules['aiida_mlpes'] = None; sys.modules['ase'] = None  # any import of them now fails\n"
        "import torch\n"
        f"module = torch.jit.load({str(path)!r})\n"
        "positions = torch.tensor(json.loads(sys.stdin.read()), dtype=torch.float64)\n"
        "energy, forces = module(positions)\n"
        "print(json.dumps({'energy': float(energy), 'forces': forces.tolist(), 'units': module.units,\n"
        "                  'numbers': module.atomic_numbers.tolist()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps((atoms.positions / 10.0).tolist()),  # nm
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["units"] == "openmm"
    assert result["numbers"] == atoms.numbers.tolist()
    atoms.calc = MLPESCalculator(model)
    kj_per_mol = 1.0 / KJ_PER_MOL  # 1 eV in kJ/mol (ase.units, as the export uses)
    assert result["energy"] == pytest.approx(atoms.get_potential_energy() * kj_per_mol, abs=1e-6)
    forces = np.array(result["forces"]) / kj_per_mol / 10.0  # kJ/mol/nm -> eV/Angstrom
    assert np.abs(forces - atoms.get_forces()).max() < 1e-4


def test_export_from_file_and_float32(tmp_path):
    """A float32 model file exports too; results agree with the calculator to float32 precision."""
    config = ModelConfig(architecture="physnet", elements=[1, 7], **{**SMALL, "dtype": "float32"})
    torch.manual_seed(4)
    model = perturbed(build_model(config), 4, scale=0.05)
    from aiida_mlpes.core.models import load_model

    path = save_model(model, tmp_path / "model.pt")
    atoms = distorted("NH3", 1, seed=5)[0]
    module = export_torchscript(load_model(path), atoms.numbers, tmp_path / "nh3.pt", charge=0.0)
    assert exported_info(load_exported(tmp_path / "nh3.pt")) == {
        "atomic_numbers": [7, 1, 1, 1],
        "charge": 0.0,
        "units": "ase",
    }
    atoms.calc = MLPESCalculator(path)
    energy, forces = module(torch.as_tensor(atoms.positions))
    assert float(energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-3)
    assert np.abs(forces.numpy() - atoms.get_forces()).max() < 1e-3


def test_export_bad_input():
    model = make_model("physnet")
    with pytest.raises(ValueError, match="units"):
        export_torchscript(model, [7, 1, 1, 1], units="bohr")
    with pytest.raises(ValueError, match=r"Cl \(Z=17\)"):
        export_torchscript(model, [17, 1])
    with pytest.raises(ValueError, match="at least 2 atoms"):
        export_torchscript(model, [7])
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        export_torchscript(model, [7, 1, 1, 1], positions=np.zeros((3, 3)))
    small = build_model(ModelConfig(elements=[1, 7], all_pairs_max_atoms=3, **SMALL))
    with pytest.raises(ValueError, match="all_pairs_max_atoms=3"):
        export_torchscript(small, [7, 1, 1, 1])
    module = export_torchscript(model, [7, 1, 1, 1])
    with pytest.raises(Exception, match="shape"):
        module(torch.zeros(3, 3, dtype=torch.float64))
