"""Reference labelling that heals itself: ``ReferenceWorkChain`` (``mlpes.reference``) splits the structures
into batches and runs one ``ReferenceBaseWorkChain`` (``mlpes.reference_base``) per batch, in parallel;
each of those is a ``BaseRestartWorkChain`` around the batch CalcJob of the code's program (``mlpes.xtb``,
``mlpes.orca``, ``mlpes.gaussian`` or ``mlpes.ase``) whose process handlers

- resubmit only the structures a walltime kill left unfinished (exit 400),
- retry SCF failures with a stronger convergence strategy (exit 410; per-structure ``scf_fix_level``),
- retry structures that failed otherwise (program error, missing output, unphysical result),

and exclude a structure only after ``max_structure_retries`` failed attempts. Every successful structure is
kept; the merged PESDataset and the excluded structures with their reasons are the outputs.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import yaml
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import (
    ExitCode,
    ToContext,
    WorkChain,
    calcfunction,
)

from aiida_mlpes.calculations.reference import n_structures
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.protocols import deep_merge
from aiida_mlpes.workflows.reference_base import (
    ReferenceBaseWorkChain,
    _calculation_class,
    _define_common_inputs,
    _merge,
    _validate,
    join_exclusions,
)
from aiida_mlpes.workflows.replay import launched_child

__all__ = ("ReferenceBaseWorkChain", "ReferenceWorkChain", "_calculation_class")


PROTOCOLS = pathlib.Path(__file__).parent / "protocols"


def _validate_batch_size(value: orm.Int, _port=None) -> str | None:
    return None if value.value >= 1 else f"batch_size must be at least 1, got {value.value}"


class ReferenceWorkChain(WorkChain):
    """Label many structures: batches of ``batch_size`` run in parallel, each healed by its own
    ``ReferenceBaseWorkChain``; outputs the merged dataset and the excluded structures."""

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        _define_common_inputs(spec)
        spec.input(
            "batch_size",
            valid_type=orm.Int,
            default=lambda: orm.Int(100),
            serializer=orm.to_aiida_type,
            validator=_validate_batch_size,
            help="Structures per CalcJob (a job costs ~1 s of engine time, xtb on NH3 ~0.02 s).",
        )
        spec.input(
            "max_iterations",
            valid_type=orm.Int,
            default=lambda: orm.Int(10),
            serializer=orm.to_aiida_type,
            help="Maximum jobs per batch (first run plus restarts).",
        )
        spec.inputs.validator = _validate
        spec.outline(cls.setup, cls.run_batches, cls.results)
        spec.exit_code(
            403,
            "ERROR_ALL_STRUCTURES_EXCLUDED",
            message="No structure could be labelled; see the `excluded` output for the reasons.",
        )
        spec.exit_code(404, "ERROR_BATCH_FAILED", message="Batch work chain {pk} failed: {message}")

    @classmethod
    def get_protocol_filepath(cls, program: str) -> pathlib.Path:
        """The YAML protocol file of ``program`` (xtb, orca, gaussian, ase)."""
        path = PROTOCOLS / f"reference_{program}.yaml"
        if not path.is_file():
            known = sorted(p.stem.removeprefix("reference_") for p in PROTOCOLS.glob("reference_*.yaml"))
            raise ValueError(f"no reference protocols for program {program!r}; known: {known}")
        return path

    @classmethod
    def get_available_protocols(cls, program: str = "xtb") -> dict[str, dict[str, str]]:
        """Protocol names of ``program`` with their descriptions."""
        data = yaml.safe_load(cls.get_protocol_filepath(program).read_text())
        return {name: {"description": p.get("description", "")} for name, p in data["protocols"].items()}

    @classmethod
    def get_protocol_inputs(
        cls, program: str, protocol: str | None = None, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Inputs of ``protocol`` (default: the file's default protocol) merged with ``overrides``."""
        data = yaml.safe_load(cls.get_protocol_filepath(program).read_text())
        name = protocol or data["default_protocol"]
        if name not in data["protocols"]:
            raise ValueError(
                f"protocol {name!r} unknown for {program}; choose one of {sorted(data['protocols'])}"
            )
        chosen = {k: v for k, v in data["protocols"][name].items() if k != "description"}
        return deep_merge(deep_merge(data["default_inputs"], chosen), overrides or {})

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structures: PESDataset | orm.StructureData | orm.TrajectoryData,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        charge: int = 0,
        multiplicity: int = 1,
    ):
        """A builder with the protocol's inputs for the program of ``code`` (its default_calc_job_plugin).

        ``overrides`` is merged into the protocol's inputs (e.g. ``{"parameters": {"solvent": "water"}}``,
        ``{"batch_size": 50}``), ``options`` into the CalcJobs' ``metadata.options``.
        """
        program = _calculation_class(code).__module__.rsplit(".", 1)[-1]
        inputs = cls.get_protocol_inputs(program, protocol, overrides)
        if options:
            inputs["options"] = deep_merge(inputs.get("options", {}), options)
        builder = cls.get_builder()
        builder.code = code
        builder.structures = structures
        builder.charge = orm.Int(charge)
        builder.multiplicity = orm.Int(multiplicity)
        builder.parameters = orm.Dict(inputs["parameters"])
        builder.options = orm.Dict(inputs.get("options", {}))
        for key, node_type in (
            ("batch_size", orm.Int),
            ("max_structure_retries", orm.Int),
            ("min_distance", orm.Float),
            ("max_iterations", orm.Int),
        ):
            if key in inputs:
                builder[key] = node_type(inputs[key])
        return builder

    def setup(self) -> None:
        if "indices" in self.inputs:
            indices = [int(i) for i in self.inputs.indices.get_list()]
        else:
            indices = list(range(n_structures(self.inputs.structures)))
        size = max(1, self.inputs.batch_size.value)
        n_batches = math.ceil(len(indices) / size)
        # equal-sized batches (e.g. 200 with batch_size 150 -> 100 + 100), so parallel jobs finish together
        per = math.ceil(len(indices) / n_batches)
        self.ctx.batches = [indices[k : k + per] for k in range(0, len(indices), per)]

    def run_batches(self) -> ToContext:
        futures = {}
        for k, batch in enumerate(self.ctx.batches):
            inputs = {
                "code": self.inputs.code,
                "structures": self.inputs.structures,
                "indices": orm.List(batch),
                "charge": self.inputs.charge,
                "multiplicity": self.inputs.multiplicity,
                "parameters": self.inputs.parameters,
                "min_distance": self.inputs.min_distance,
                "options": self.inputs.options,
                "max_structure_retries": self.inputs.max_structure_retries,
                "max_iterations": self.inputs.max_iterations,
                "metadata": {"call_link_label": f"batch_{k:04d}"},
            }
            if "driver_code" in self.inputs:
                inputs["driver_code"] = self.inputs.driver_code
            # after a daemon crash this step is replayed: adopt the batches its first try launched
            launched = launched_child(self, LinkType.CALL_WORK, f"batch_{k:04d}")
            futures[f"batch_{k:04d}"] = launched or self.submit(ReferenceBaseWorkChain, **inputs)
        self.report(
            f"submitted {len(futures)} batches of up to {max(len(b) for b in self.ctx.batches)} structures"
        )
        return ToContext(**futures)

    def results(self) -> ExitCode | None:
        datasets = []
        for k in range(len(self.ctx.batches)):
            node = self.ctx[f"batch_{k:04d}"]
            if "dataset" in node.outputs:
                datasets.append(node.outputs.dataset)
            elif not node.is_finished_ok and node.exit_status != 403:
                return self.exit_codes.ERROR_BATCH_FAILED.format(pk=node.pk, message=node.exit_message)
        batches = [self.ctx[f"batch_{k:04d}"] for k in range(len(self.ctx.batches))]
        excluded = {
            f"batch_{k:04d}": b.outputs.excluded for k, b in enumerate(batches) if "excluded" in b.outputs
        }
        if len(excluded) == 1:
            self.out("excluded", next(iter(excluded.values())))
        elif excluded:
            self.out("excluded", join_exclusions(**excluded))
        if not datasets:
            return self.exit_codes.ERROR_ALL_STRUCTURES_EXCLUDED
        self.out("dataset", datasets[0] if len(datasets) == 1 else _merge(datasets))
        return None


@calcfunction
def frequencies_from_vibspectrum(vibspectrum: orm.SinglefileData) -> orm.ArrayData:
    """Wavenumbers (cm^-1, array ``frequencies``; 3N modes) from the ``vibspectrum`` file of ``xtb --hess``."""
    from aiida_mlpes.core.reference.xtb import parse_vibspectrum

    array = orm.ArrayData()
    array.set_array("frequencies", parse_vibspectrum(vibspectrum.get_content()))
    return array


def run_xtb_frequencies(
    code: orm.AbstractCode | str,
    structure: orm.StructureData,
    charge: int = 0,
    multiplicity: int = 1,
    method: str = "GFN2-xTB",
    options: dict[str, Any] | None = None,
) -> tuple[orm.ArrayData, orm.ProcessNode]:
    """Reference harmonic frequencies with ``xtb --hess`` as an aiida-shell ShellJob (a command on files).

    Returns the frequencies (ArrayData ``frequencies`` in cm^-1, all 3N modes, made by a calcfunction from the
    job's ``vibspectrum``) and the ShellJob node. xtb writes its normal-termination line to stderr, so stderr is
    redirected into stdout (otherwise aiida-shell reports exit 410 for a successful run).
    """
    from aiida_shell import launch_shell_job

    from aiida_mlpes.core.reference.validation import check_charge_multiplicity
    from aiida_mlpes.core.reference.xtb import METHODS, write_xyz

    atoms = structure.get_ase()
    problem = check_charge_multiplicity(atoms.numbers, charge, multiplicity)
    if problem:
        raise ValueError(problem)
    if method not in METHODS:
        raise ValueError(f"xtb method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    geometry = orm.SinglefileData.from_string(write_xyz(atoms.numbers, atoms.positions), filename="mol.xyz")
    arguments = [
        "{geometry}",
        "--hess",
        *METHODS[method],
        "--chrg",
        str(int(charge)),
        "--uhf",
        str(int(multiplicity) - 1),
    ]
    metadata_options = {"redirect_stderr": True, "environment_variables": {"OMP_NUM_THREADS": "1"}}
    metadata_options.update(options or {})
    results, node = launch_shell_job(
        code,
        arguments=arguments,
        nodes={"geometry": geometry},
        filenames={"geometry": "mol.xyz"},
        outputs=["vibspectrum"],
        metadata={"options": metadata_options},
    )
    if not node.is_finished_ok or "vibspectrum" not in results:
        raise RuntimeError(
            f"xtb --hess failed (ShellJob<{node.pk}>: exit {node.exit_status} {node.exit_message})"
        )
    return frequencies_from_vibspectrum(results["vibspectrum"]), node
