"""Base CalcJob for reference programs (xtb, ORCA, Gaussian) that label many structures in one job.

One job computes a batch: the CalcJob writes one input file per structure (``s00000.xyz``/``.inp``/``.com``)
and one :class:`~aiida.common.datastructures.CodeInfo` per structure, run in sequence
(``CodeRunMode.SERIAL``). The job script is then a list of plain program calls built by the engine from
argument lists (each argument shell-escaped), so no user text reaches a shell; a failing structure does not
stop the ones after it, a walltime kill leaves the finished ones on disk, and the ``code`` of the job is the
real program, which keeps its provenance and lets the scheduler set up MPI/modules for it.

Exit codes shared by all reference CalcJobs (and ``mlpes.ase``), so one work chain handles them all:
0 also when some structures failed (they are listed in the ``failures`` output); a non-zero code when none
succeeded (by failure category) or when the job stopped before all structures ran (400).
"""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

import numpy as np
from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo, CodeRunMode
from aiida.common.folders import Folder
from aiida.engine import CalcJob

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.validation import MIN_DISTANCE, structure_problems
from aiida_mlpes.data.dataset import PESDataset

#: Failure category -> exit code label used when every structure of a job failed that way.
CATEGORY_EXIT_CODES = {
    common.MISSING_OUTPUT: "ERROR_OUTPUT_MISSING",
    common.ERROR: "ERROR_PROGRAM_FAILED",
    common.UNPHYSICAL: "ERROR_UNPHYSICAL",
    common.WALLTIME: "ERROR_OUT_OF_WALLTIME",
    common.NOT_RUN: "ERROR_OUT_OF_WALLTIME",
    common.SCF_NOT_CONVERGED: "ERROR_SCF_NOT_CONVERGED",
}


def define_reference_ports(spec, parser_name: str) -> None:
    """Inputs, outputs and exit codes common to every reference CalcJob."""
    spec.input(
        "structures",
        valid_type=(PESDataset, orm.StructureData, orm.TrajectoryData),
        help="The structures to label: a PESDataset (labels in it are ignored), a StructureData or a TrajectoryData.",
    )
    spec.input(
        "indices",
        valid_type=orm.List,
        required=False,
        serializer=orm.to_aiida_type,
        help="Which conformations of `structures` to compute (0-based); default: all.",
    )
    spec.input(
        "charge",
        valid_type=orm.Int,
        default=lambda: orm.Int(0),
        serializer=orm.to_aiida_type,
        help="Total charge of every structure (e).",
    )
    spec.input(
        "multiplicity",
        valid_type=orm.Int,
        default=lambda: orm.Int(1),
        serializer=orm.to_aiida_type,
        help="Spin multiplicity 2S+1 of every structure.",
    )
    spec.input(
        "parameters",
        valid_type=orm.Dict,
        default=lambda: orm.Dict({}),
        serializer=orm.to_aiida_type,
        help="Program settings (method keywords, SCF settings); see the CalcJob's docstring.",
    )
    spec.input(
        "min_distance",
        valid_type=orm.Float,
        default=lambda: orm.Float(MIN_DISTANCE),
        serializer=orm.to_aiida_type,
        help="Structures with two atoms closer than this (Angstrom) are rejected before submission.",
    )
    spec.output(
        "dataset",
        valid_type=PESDataset,
        required=False,
        help="The structures that succeeded, with energy, forces (and dipole, atomic charges where the "
        "program gives them) in eV/Angstrom units; source = this job's uuid.",
    )
    spec.output(
        "failures",
        valid_type=orm.Dict,
        help="Per-structure failures: {index: {category, message}}; category 'not_run' = never started.",
    )
    spec.inputs["metadata"]["options"]["parser_name"].default = parser_name
    spec.inputs["metadata"]["options"]["resources"].default = {
        "num_machines": 1,
        "num_mpiprocs_per_machine": 1,
    }
    # a port with a default is not required (plumpy's rule); otherwise `node.get_builder_restart()` fails
    # on a job submitted without `resources` (the builder validates the stored options without defaults)
    spec.inputs["metadata"]["options"]["resources"].required = False
    spec.inputs["metadata"]["options"]["withmpi"].default = False
    define_reference_exit_codes(spec)


def define_reference_exit_codes(spec) -> None:
    """Exit codes by failure category (300-399 unrecoverable as they stand, 400+ recoverable by a fix)."""
    exit_codes = dict(spec.exit_codes)
    wanted = [
        (
            302,
            "ERROR_OUTPUT_MISSING",
            "No structure produced the requested results (missing output): {message}",
        ),
        (310, "ERROR_PROGRAM_FAILED", "The program terminated with an error for every structure: {message}"),
        (
            320,
            "ERROR_UNPHYSICAL",
            "Every structure was rejected as unphysical (geometry or energy): {message}",
        ),
        (
            400,
            "ERROR_OUT_OF_WALLTIME",
            "The job stopped before all structures ran (walltime or kill); {message}",
        ),
        (410, "ERROR_SCF_NOT_CONVERGED", "The SCF did not converge for any structure: {message}"),
    ]
    for status, label, message in wanted:
        if label not in exit_codes:
            spec.exit_code(status, label, message=message)


def load_structures(node: orm.Data, indices: list[int] | None = None) -> RaggedArrays:
    """RaggedArrays (positions in Angstrom) of the conformations ``indices`` (all if None) of ``node``."""
    if isinstance(node, PESDataset):
        with node.open_dataset() as dataset:
            arrays = dataset.read(indices)
        for name in ("energy", "forces", "dipole", "charge", "atomic_charges"):
            setattr(arrays, name, None)
        return arrays
    if isinstance(node, orm.StructureData):
        arrays = RaggedArrays.from_atoms([node.get_ase()])
    elif isinstance(node, orm.TrajectoryData):
        from ase.data import atomic_numbers

        positions = node.get_positions()
        numbers = np.array([atomic_numbers[s] for s in node.symbols], dtype=np.int64)
        arrays = RaggedArrays(
            n_atoms=np.full(len(positions), len(numbers)),
            atomic_numbers=np.tile(numbers, len(positions)),
            positions=positions.reshape(-1, 3),
        )
    else:
        raise TypeError(f"cannot read structures from {type(node).__name__}")
    arrays.source = np.array([""] * len(arrays), dtype=object)
    return arrays if indices is None else arrays.select(indices)


def n_structures(node: orm.Data) -> int:
    """Number of conformations held by ``node``."""
    if isinstance(node, PESDataset):
        return node.n_conformations
    if isinstance(node, orm.TrajectoryData):
        return int(node.numsteps)
    return 1


def validate_reference_inputs(inputs: dict[str, Any], max_z: int = 118) -> str | None:
    """Reject bad structures before submission: indices out of range, unknown elements, overlapping atoms,
    a charge/multiplicity that does not fit the electron count."""
    if "structures" not in inputs:
        return None
    node = inputs["structures"]
    total = n_structures(node)
    indices = inputs["indices"].get_list() if "indices" in inputs else None
    if indices is not None:
        bad = [i for i in indices if not (isinstance(i, int) and 0 <= i < total)]
        if bad or not indices:
            return f"indices {bad or indices} are not valid conformation numbers of a set of {total}"
    arrays = load_structures(node, indices)
    min_distance = inputs["min_distance"].value if "min_distance" in inputs else MIN_DISTANCE
    problems = structure_problems(
        arrays, int(inputs["charge"].value), int(inputs["multiplicity"].value), min_distance, max_z
    )
    if problems:
        listing = "; ".join(
            f"conformation {(indices[i] if indices else i)}: {msg}"
            for i, msg in sorted(problems.items())[:10]
        )
        return f"{len(problems)} invalid structure(s): {listing}"
    return None


#: Settings of the driver process in driver mode (see ``driver_code``).
DRIVER_INPUT = "commands.json"
#: Per-structure results parsed by the driver process (JSON lines), when the program has a reader there.
DRIVER_RESULTS = "results.jsonl"


def validate_driver_code(inputs: dict[str, Any]) -> str | None:
    """Driver mode needs an installed program code and a driver code on the same computer."""
    driver, code = inputs.get("driver_code"), inputs.get("code")
    if driver is None or code is None:
        return None
    if not isinstance(code, orm.InstalledCode):
        return f"driver_code needs an installed code (a path on the computer), not a {type(code).__name__}"
    if driver.computer is None or code.computer is None or driver.computer.uuid != code.computer.uuid:
        return "driver_code and code must be on the same computer"
    return None


class ReferenceCalculation(CalcJob):
    """One job labelling a batch of structures with an external program, one program call per structure.

    Subclasses set ``PROGRAM`` and ``RETRIEVE`` (glob patterns of the files the parser reads) and implement
    :meth:`check_parameters`, :meth:`write_structure` (input file and CodeInfo for one structure) and
    :meth:`level_of_theory`.
    """

    PROGRAM: ClassVar[str] = ""
    RETRIEVE: ClassVar[list[str]] = []
    #: Keep every per-structure input file in the node's repository. When False (cheap methods, many
    #: structures) they are excluded and one multi-frame ``structures.xyz`` is stored instead, since
    #: storing hundreds of small objects dominates the upload time.
    STORE_STRUCTURE_INPUTS: ClassVar[bool] = True
    #: Name (without extension) of structure ``k`` of the job.
    NAME_FORMAT: ClassVar[str] = "s{:05d}"
    #: In driver mode, the program whose outputs the driver process parses itself (a key of
    #: ``aiida_mlpes.core.commands.READERS``): the job then returns one results file instead of every
    #: output. None: the outputs are retrieved and parsed here.
    DRIVER_READER: ClassVar[str | None] = None

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        define_reference_ports(spec, f"mlpes.{cls.PROGRAM}")
        spec.input(
            "keep_raw_outputs",
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            serializer=orm.to_aiida_type,
            help="Store every program output in `retrieved` (default: parse them and keep only failures' "
            "messages).",
        )
        spec.input(
            "driver_code",
            valid_type=orm.AbstractCode,
            required=False,
            help="An aiida-mlpes-run code on the same computer: run all program calls of the batch from one "
            "process instead of one CodeInfo each (much less engine time for cheap methods such as xTB).",
        )
        spec.inputs.validator = cls.validate_inputs

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], _ctx=None) -> str | None:
        message = validate_driver_code(inputs)
        if message:
            return message
        parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
        try:
            cls.check_parameters(parameters)
        except (ValueError, TypeError) as exc:
            return f"parameters: {exc}"
        return validate_reference_inputs(inputs, cls.max_z(parameters))

    # --- to be implemented by subclasses -------------------------------------------------------------------
    @classmethod
    def check_parameters(cls, parameters: dict[str, Any]) -> None:
        """Raise ValueError for unknown or malformed parameters."""
        raise NotImplementedError

    @classmethod
    def max_z(cls, parameters: dict[str, Any]) -> int:
        """Highest atomic number the method treats."""
        return 118

    @classmethod
    def level_of_theory(cls, parameters: dict[str, Any]) -> str:
        """The level of theory written into the output dataset (independent of SCF-fix settings)."""
        raise NotImplementedError

    def write_structure(
        self,
        folder: Folder,
        name: str,
        index: int,
        numbers: np.ndarray,
        positions: np.ndarray,
        parameters: dict[str, Any],
    ) -> CodeInfo:
        """Write the input of one structure into ``folder``; return the CodeInfo that runs it."""
        raise NotImplementedError

    # --- common machinery -----------------------------------------------------------------------------------
    def _driver_codeinfo(self, folder: Folder, codes_info: list[CodeInfo]) -> CodeInfo:
        """One ``aiida-mlpes-run run_commands`` call that runs the program calls of ``codes_info``, up to
        :meth:`driver_processes` at a time; each call's input files travel inside its settings file."""
        executable = str(self.inputs.code.get_executable())
        environment = dict(self.inputs.metadata.options.get("environment_variables") or {})
        environment.setdefault(
            "OMP_NUM_THREADS", "1"
        )  # xtb & co. are far slower with threads on tiny molecules
        commands = []
        for name, info, files in zip(self._names, codes_info, self._structure_files, strict=True):
            command = {
                "args": [executable, *info.cmdline_params],
                "stdout": info.stdout_name,
                "stderr": info.stderr_name,
                "files": files,
            }
            if self.DRIVER_READER:
                command["parse"] = {"program": self.DRIVER_READER, "namespace": name}
            commands.append(command)
        settings = {
            "commands": commands,
            "environment": environment,
            "processes": self.driver_processes(),
            "results": DRIVER_RESULTS,
        }
        folder.create_file_from_filelike(io.StringIO(json.dumps(settings)), DRIVER_INPUT, mode="w")
        driver = CodeInfo()
        driver.code_uuid = self.inputs.driver_code.uuid
        driver.cmdline_params = ["run_commands", DRIVER_INPUT]
        driver.stdout_name = "driver.out"
        driver.stderr_name = "driver.err"
        return driver

    def driver_processes(self) -> int:
        """Program calls run at once in driver mode: the MPI processes the job was given
        (``num_machines * num_mpiprocs_per_machine``), each call single-threaded."""
        resources = self.inputs.metadata.options.get("resources") or {}
        return max(
            1, int(resources.get("num_machines", 1)) * int(resources.get("num_mpiprocs_per_machine", 1))
        )

    def selected_indices(self) -> list[int]:
        if "indices" in self.inputs:
            return [int(i) for i in self.inputs.indices.get_list()]
        return list(range(n_structures(self.inputs.structures)))

    def write_text(self, folder: Folder, name: str, text: str) -> None:
        """Write an input file of the current structure (in driver mode: into the driver's settings, which
        writes it on the computer just before the call; one file instead of hundreds to upload)."""
        if self._structure_files is not None:
            self._structure_files[-1][name] = text
            return
        folder.create_file_from_filelike(io.StringIO(text), name, mode="w")
        self._written.append(name)

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        indices = self.selected_indices()
        arrays = load_structures(self.inputs.structures, indices)
        parameters = self.inputs.parameters.get_dict()
        codes_info: list[CodeInfo] = []
        self._written: list[str] = []
        driver_mode = "driver_code" in self.inputs
        self._structure_files: list[dict[str, str]] | None = [] if driver_mode else None
        self._names: list[str] = []
        for k, index in enumerate(indices):
            name = self.NAME_FORMAT.format(k)
            self._names.append(name)
            if self._structure_files is not None:
                self._structure_files.append({})
            sl = arrays.atom_slice(k)
            codeinfo = self.write_structure(
                folder, name, index, arrays.atomic_numbers[sl], arrays.positions[sl], parameters
            )
            codeinfo.code_uuid = self.inputs.code.uuid
            codeinfo.withmpi = self.inputs.metadata.options.withmpi
            codes_info.append(codeinfo)
        calcinfo = CalcInfo()
        calcinfo.codes_info = codes_info
        if driver_mode:
            calcinfo.codes_info = [self._driver_codeinfo(folder, codes_info)]
            # the program's own environment set-up (module load ...) still runs before the calls
            calcinfo.prepend_text = self.inputs.code.prepend_text or None
        if not self.STORE_STRUCTURE_INPUTS:
            from ase.data import chemical_symbols

            frames = []
            for k, index in enumerate(indices):
                sl = arrays.atom_slice(k)
                frames.append(f"{int(arrays.n_atoms[k])}\nstructure {index}")
                frames.extend(
                    f"{chemical_symbols[z]} {x:.12f} {y:.12f} {zz:.12f}"
                    for z, (x, y, zz) in zip(arrays.atomic_numbers[sl], arrays.positions[sl], strict=True)
                )
            folder.create_file_from_filelike(
                io.StringIO("\n".join(frames) + "\n"), "structures.xyz", mode="w"
            )
            calcinfo.provenance_exclude_list = list(self._written)
        calcinfo.codes_run_mode = CodeRunMode.SERIAL
        outputs = [DRIVER_RESULTS] if driver_mode and self.DRIVER_READER else list(self.RETRIEVE)
        if self.inputs.keep_raw_outputs.value:
            calcinfo.retrieve_list = sorted({*outputs, *self.RETRIEVE})
            calcinfo.retrieve_temporary_list = []
        else:
            calcinfo.retrieve_list = []
            calcinfo.retrieve_temporary_list = outputs
        return calcinfo
