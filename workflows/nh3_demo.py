"""NH3 demo: a GFN2-xTB machine-learned PES of ammonia, refined until it is shown right, with its inversion TS.

Run with `verdi run workflows/nh3_demo.py [--fast] [--seed N]` (scripts/setup.sh does this on the embedded
default profile). For your own molecule copy the ten lines under "the work chain": change the structure (and
the TS guess, or drop it), the reference code and the protocol.

The loop (`ConstructPESWorkChain`, protocol `moderate`, or `fast` with --fast) samples around the minimum,
labels with GFN2-xTB (tblite), trains a committee of PhysNets and, every iteration, characterizes the
committee's surface (minimum, planar TS, MEP, harmonic frequencies, DMC), validates it against xTB at the
model's own stationary points and labels fresh structures. It stops when every criterion holds (see
docs/construct_pes.md). The demo then compares the final model with xTB itself: harmonic frequencies from
`xtb --hess` at the model's minimum and the inversion barrier of xTB's own surface.
"""

from __future__ import annotations

import argparse

import numpy as np
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import molecule

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain
from aiida_mlpes.workflows.reference import run_xtb_frequencies

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true", help="the fast protocol (what CI runs)")
parser.add_argument("--seed", type=int, default=0, help="seed of sampling, training and DMC")
args, _ = parser.parse_known_args()

# --- the work chain -----------------------------------------------------------------------------------------
xtb = orm.load_code("xtb@localhost")
runner = orm.load_code("aiida-mlpes-run@localhost")
# GFN2-xTB through tblite (mlpes.ase): Debian's xtb 6.5.1 executable returns analytic gradients that disagree
# with its own energies at some slightly distorted NH3 geometries (0.025 eV/Angstrom, see docs/reference.md),
# which would spoil both the training labels and the finite-difference check of the frequencies.
tblite = orm.load_code("aiida-mlpes-ase@localhost")
nh3 = orm.StructureData(ase=molecule("NH3"))
planar = orm.StructureData(
    ase=Atoms("NH3", positions=[(0, 0, 0), (1.0, 0, 0), (-0.5, 0.866, 0), (-0.5, -0.866, 0)])
)
seeds = {
    "sample": {"seed": args.seed + 1},
    "train": {"training": {"seed": args.seed}, "split": {"seed": args.seed}},
}
builder = ConstructPESWorkChain.get_builder_from_protocol(
    {"reference": tblite, "runner": runner},
    nh3,
    protocol="fast" if args.fast else "moderate",
    ts_structure=planar,
    overrides=seeds,
)
results, node = run_get_node(builder)

# --- what came out -------------------------------------------------------------------------------------------
print(
    f"\nConstructPESWorkChain<{node.pk}> finished with exit status {node.exit_status}: {node.exit_message or 'converged'}"
)
for record in results["history"]["iterations"] if "history" in results else []:
    verdicts = ", ".join(f"{k} {'ok' if c['passed'] else 'no'}" for k, c in record["criteria"].items())
    new = record["new_labels"]
    validation = record["validation"]
    print(
        f"  iteration {record['iteration']}: {record['n_conformations']} conformations, holes "
        f"{record['holes']['found']}/{record['holes']['labelled']}/{record['holes']['confirmed']} (found/labelled/"
        f"confirmed), new-label MAE {1000 * (new.get('energy_mae') or float('nan')):.1f} meV, frequency RMSE vs xTB "
        f"{validation.get('frequency_rmse') or float('nan'):.1f} cm^-1, ZPE {record['dmc']['zpe_cm'] or float('nan'):.0f} cm^-1 | {verdicts}"
    )
if "model" not in results:
    raise SystemExit("no model was trained")

# xtb --hess at the model's minimum: the frequencies the model should reproduce at that geometry.
characterization = results["characterization"].get_dict()
model_frequencies = np.array(characterization["frequencies"]["minimum"])
frequencies, _ = run_xtb_frequencies(xtb, results["minimum"])
xtb_frequencies = np.sort(frequencies.get_array("frequencies"))[-len(model_frequencies) :]
rmse = float(np.sqrt(np.mean((np.sort(model_frequencies) - xtb_frequencies) ** 2)))
print("\nHarmonic frequencies at the model's minimum (cm^-1):")
print("  model    ", np.round(np.sort(model_frequencies), 1))
print("  xtb --hess", np.round(xtb_frequencies, 1))
print(f"  RMSE {rmse:.1f} cm^-1 (target <= 10)")
validation = results["history"]["iterations"][-1]["validation"]
if validation.get("reference_frequencies"):
    print(
        "  GFN2-xTB (tblite, central differences; the loop's own check)",
        np.round(validation["reference_frequencies"], 1),
    )
    print(f"  RMSE {validation['frequency_rmse']:.1f} cm^-1")

# xTB's own barrier: its minimum and planar TS optimised on xTB's surface (tblite GFN2-xTB).
reference = CharacterizeCalculation.get_builder()
reference.code = runner
reference.driver = orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB"}})
reference.structure = nh3
reference.ts_structure = planar
reference.tasks = orm.Dict({"optimize": {"fmax": 0.001}, "optimize_ts": {}})
reference.metadata = {"options": {"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1}}}
xtb_surface = run_get_node(reference)[0]["results"].get_dict()
model_barrier = characterization["ts"]["barrier"]
xtb_barrier = xtb_surface["ts"]["barrier"]
print(
    f"Inversion barrier: model {model_barrier:.4f} eV, xTB {xtb_barrier:.4f} eV, "
    f"difference {model_barrier - xtb_barrier:+.4f} eV (target within 0.01)"
)
print(
    f"Model: PESModel<{results['model'].pk}> (a committee of {results['model'].base.attributes.get('committee_size', 1)})"
)
print(
    f"Dataset: PESDataset<{results['dataset'].pk}>; convergence plot: SinglefileData<{results['convergence_plot'].pk}>"
)
print(
    f"Provenance: verdi node graph generate {node.pk}; archive: verdi archive create -N {node.pk} nh3.aiida"
)
