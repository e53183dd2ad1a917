"""``merge_datasets`` calcfunction: every merge is a provenance node linking its inputs to the result."""

from __future__ import annotations

import contextlib
import pathlib
import tempfile

from aiida import orm
from aiida.engine import calcfunction

from aiida_mlpes.core.dataset import merge_files
from aiida_mlpes.data.dataset import PESDataset


@calcfunction
def merge_datasets(
    deduplicate: orm.Bool | None = None, allow_mixed_levels: orm.Bool | None = None, **datasets: PESDataset
) -> dict:
    """Merge PESDatasets (any number, passed as keyword arguments) into one, dropping duplicate conformations.

    Refuses different levels of theory unless ``allow_mixed_levels``. Returns ``dataset`` (PESDataset) and
    ``statistics`` (Dict: read, written, duplicates).
    """
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        paths = [stack.enter_context(datasets[key].as_path()) for key in sorted(datasets)]
        output = pathlib.Path(tmp) / "merged.h5"
        stats = merge_files(
            paths,
            output,
            deduplicate=True if deduplicate is None else deduplicate.value,
            allow_mixed_levels=False if allow_mixed_levels is None else allow_mixed_levels.value,
        )
        return {"dataset": PESDataset(file=output), "statistics": orm.Dict(stats)}
