"""``MlpesRunCalculation``: base CalcJob for stages run by ``aiida-mlpes-run TASK input.json``.

A subclass sets ``TASK`` and the parser entry point, declares its ports, and implements
:meth:`write_task_inputs`, which writes any extra files and returns the task settings; the base writes
``input.json``, copies node files from the repository without loading them into memory, runs the code
and retrieves ``result.json`` plus the declared output files. Large outputs (datasets, models) are
retrieved to a temporary folder so they are stored once, as output nodes, not twice.
"""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.common.folders import Folder
from aiida.engine import CalcJob


def resources_cores(resources: dict[str, Any], computer: orm.Computer | None = None) -> int:
    """CPU cores on one machine of a job with these scheduler ``resources``: ``num_cores_per_machine`` if
    given, else ``num_mpiprocs_per_machine`` (the computer's default if unset) x ``num_cores_per_mpiproc``
    (1 if unset); for a scheduler with parallel environments (SGE), ``tot_num_mpiprocs``."""
    resources = dict(resources)
    if "tot_num_mpiprocs" in resources and "num_machines" not in resources:
        return max(1, int(resources["tot_num_mpiprocs"]))
    per_machine = resources.get("num_mpiprocs_per_machine")
    if per_machine is None and computer is not None:
        per_machine = computer.get_default_mpiprocs_per_machine()
    if per_machine is None and resources.get("tot_num_mpiprocs") and resources.get("num_machines"):
        per_machine = int(resources["tot_num_mpiprocs"]) // int(resources["num_machines"])
    if resources.get("num_cores_per_machine"):
        return max(1, int(resources["num_cores_per_machine"]))
    return max(1, int(per_machine or 1) * int(resources.get("num_cores_per_mpiproc") or 1))


class MlpesRunCalculation(CalcJob):
    """Run one ``aiida-mlpes-run`` task on a computer (local or remote, any scheduler)."""

    TASK: ClassVar[str] = ""
    INPUT_FILE: ClassVar[str] = "input.json"
    RESULT_FILE: ClassVar[str] = "result.json"
    STDOUT_FILE: ClassVar[str] = "aiida.out"
    #: Output files that are only parsed into nodes (not kept in the ``retrieved`` folder).
    RETRIEVE_TEMPORARY: ClassVar[list[str]] = []
    #: Small output files kept in ``retrieved`` (plots, logs, CSVs).
    RETRIEVE: ClassVar[list[str]] = []
    #: Without a ``threads`` input, run the task on the cores of the job's resources (False: leave it to the
    #: task's own default).
    THREADS_FROM_RESOURCES: ClassVar[bool] = True

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["resources"].default = {
            "num_machines": 1,
            "num_mpiprocs_per_machine": 1,
        }
        # a port with a default is not required (plumpy's rule); otherwise `node.get_builder_restart()` fails
        # on a job submitted without `resources` (the builder validates the stored options without defaults)
        spec.inputs["metadata"]["options"]["resources"].required = False
        spec.inputs["metadata"]["options"]["withmpi"].default = False
        spec.input(
            "threads",
            valid_type=orm.Int,
            required=False,
            help="Threads for torch, OpenMP and BLAS inside the task (and the programs it runs); default: the "
            "cores of the job's resources on its machine (num_mpiprocs_per_machine x num_cores_per_mpiproc, "
            "or num_cores_per_machine); mlpes.ase labelling stays single-threaded unless this is given.",
        )
        spec.exit_code(
            300,
            "ERROR_NO_RESULT",
            message="The task wrote no result.json: it was killed or crashed. {details}",
        )
        spec.exit_code(301, "ERROR_TASK_FAILED", message="The task reported an error: {message}")
        spec.exit_code(302, "ERROR_OUTPUT_MISSING", message="The task finished but output {name} is missing.")
        spec.exit_code(
            303, "ERROR_OUTPUT_INVALID", message="An output of the task could not be read: {message}"
        )

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        """Write extra input files into ``folder``; return the task settings (JSON-serialisable)."""
        raise NotImplementedError

    def job_cores(self) -> int:
        """CPU cores the job is given on its (first) machine, from ``metadata.options.resources``."""
        return resources_cores(self.inputs.metadata.options.get("resources") or {}, self.inputs.code.computer)

    def copy_node_file(self, node: orm.SinglefileData, target: str) -> None:
        """Have the engine copy the file of ``node`` to ``target`` in the working directory."""
        self._local_copy_list.append((node.uuid, node.filename, target))

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        self._local_copy_list: list[tuple[str, str, str]] = []
        settings = self.write_task_inputs(folder)
        # the task runs on exactly the cores the job was given: torch threads and OMP_NUM_THREADS (inherited by
        # the programs it starts); without it a job without --cpus-per-task would use every core of its node
        if "threads" in self.inputs:
            settings["threads"] = self.inputs.threads.value
        elif self.THREADS_FROM_RESOURCES:
            settings["threads"] = self.job_cores()
        folder.create_file_from_filelike(
            io.StringIO(json.dumps(settings, indent=2, sort_keys=True)), self.INPUT_FILE, mode="w"
        )
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self.TASK, self.INPUT_FILE]
        codeinfo.stdout_name = self.STDOUT_FILE
        codeinfo.withmpi = False

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = self._local_copy_list
        calcinfo.retrieve_list = [self.RESULT_FILE, self.STDOUT_FILE, *self.RETRIEVE]
        calcinfo.retrieve_temporary_list = list(self.RETRIEVE_TEMPORARY)
        return calcinfo
