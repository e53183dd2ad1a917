"""NH3 demo (run with `verdi run workflows/nh3_demo.py`).

Stage 0 of the full pipeline: displaced NH3 structures labelled with GFN2-xTB (tblite) become a stored
PESDataset, merged with a second batch through the `merge_datasets` calcfunction so the provenance graph
records the merge. Later stages (sampling, xTB reference jobs, training, DMC) replace the inline labelling.
"""

import numpy as np
from aiida import orm
from ase.build import molecule
from tblite.ase import TBLite

from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset


def labelled_batch(seed: int, n: int = 10) -> PESDataset:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        atoms.get_forces()
        images.append(atoms)
    return PESDataset.from_arrays(
        RaggedArrays.from_atoms(images, source="demo"), level_of_theory="GFN2-xTB"
    ).store()


first, second = labelled_batch(0), labelled_batch(1)
result = merge_datasets(a=first, b=second, deduplicate=orm.Bool(True))
merged = result["dataset"]
print(
    f"Merged dataset: PESDataset<{merged.pk}> with {merged.n_conformations} NH3 conformations "
    f"({merged.level_of_theory}); inspect with: aiida-mlpes dataset show {merged.pk}"
)
