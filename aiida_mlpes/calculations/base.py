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
            help="Threads for torch/numpy inside the task; default: all the CPUs the task sees.",
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

    def copy_node_file(self, node: orm.SinglefileData, target: str) -> None:
        """Have the engine copy the file of ``node`` to ``target`` in the working directory."""
        self._local_copy_list.append((node.uuid, node.filename, target))

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        self._local_copy_list: list[tuple[str, str, str]] = []
        settings = self.write_task_inputs(folder)
        if "threads" in self.inputs:
            settings["threads"] = self.inputs.threads.value
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
