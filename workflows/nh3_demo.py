"""NH3 demo: build a GFN2-xTB machine-learned PES of ammonia and refine it until DMC finds no holes.

Run with `verdi run workflows/nh3_demo.py` (scripts/setup.sh does this on the embedded default profile).
Copy it for your own molecule: change the structure, the reference code/parameters and the sizes below; on a
cluster only the code labels and `options` change.

Pipeline (`ConstructPESWorkChain`): normal-mode sampling around the minimum (tblite GFN2-xTB as driver),
labelling with the `xtb` executable in batched CalcJobs, training a PhysNet, then per iteration: harmonic
frequencies + diffusion Monte Carlo on the model; DMC holes are labelled with xtb, merged, and the model is
fine-tuned, until DMC finds no holes.
"""

from __future__ import annotations

import sys

from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain

FAST = "--fast" in sys.argv  # smaller sizes, for CI

xtb = orm.load_code("xtb@localhost")
runner = orm.load_code("aiida-mlpes-run@localhost")
options = {"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1}, "max_wallclock_seconds": 3600}

builder = ConstructPESWorkChain.get_builder()
builder.structure = orm.StructureData(ase=molecule("NH3"))
builder.max_iterations = 2 if FAST else 3
builder.max_new_structures = 50

builder.sample.code = runner
builder.sample.driver = orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB"}})
builder.sample.settings = orm.Dict(
    {
        "sampler": "normal_mode_sampling",
        "parameters": {"n_samples": 120 if FAST else 300, "temperature": 1000.0, "optimize": True},
        "seed": 1,
    }
)
builder.sample.metadata = {"options": options}

builder.reference.code = xtb
builder.reference.driver_code = runner  # one process runs all xtb calls of a job: far less engine time
builder.reference.parameters = orm.Dict({"method": "GFN2-xTB"})
builder.reference.batch_size = orm.Int(100)
builder.reference.options = orm.Dict(options)

builder.train.code = runner
builder.train.settings = orm.Dict(
    {
        "model": {"architecture": "physnet", "n_features": 32, "n_rbf": 32, "n_blocks": 2, "cutoff": 6.0},
        "training": {
            "max_epochs": 2000,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "wall_time_limit": 40.0 if FAST else 120.0,
            "progress_bar": False,
        },
        "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0},
    }
)
builder.train.metadata = {"options": options}

builder.characterize.code = runner
builder.characterize.tasks = orm.Dict(
    {
        "optimize": {"fmax": 0.001},
        "frequencies": {},
        "dmc": {
            "nwalkers": 1000,
            "nsteps": 600 if FAST else 3000,
            "eqsteps": 200,
            "timestep": 5.0,
            "seed": 0,
        },
    }
)
builder.characterize.metadata = {"options": options}

results, node = run_get_node(builder)
print(
    f"\nConstructPESWorkChain<{node.pk}> finished with exit status {node.exit_status}: {node.exit_message or 'ok'}"
)
for record in results["history"]["iterations"]:
    errors = record["test_metrics"].get("energy", {})
    print(
        f"  iteration {record['iteration']}: {record['n_conformations']} conformations, "
        f"DMC holes {record['n_holes']}, ZPE {record['zpe_eV']} eV, test energy MAE {errors.get('mae')} eV"
    )
characterization = results["characterization"].get_dict()
print(f"Model: PESModel<{results['model'].pk}>; dataset: PESDataset<{results['dataset'].pk}>")
print(f"Characterization: {sorted(characterization)}")
print(
    f"Provenance graph: verdi node graph generate {node.pk}; archive: verdi archive create -N {node.pk} nh3.aiida"
)
