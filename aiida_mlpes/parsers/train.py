"""Parser of ``mlpes.train``: model file -> PESModel, learning curve -> SinglefileData, metrics -> Dict."""

from __future__ import annotations

import io
from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.train import TrainCalculation, checkpoint_epoch
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.parsers.base import MlpesRunParser


class TrainParser(MlpesRunParser):
    def report_walltime_kill(self) -> None:
        epoch = checkpoint_epoch(self.node)
        if epoch is None:
            self.logger.warning(
                "the scheduler killed the training at its walltime before its first checkpoint: resubmit "
                "with a longer walltime (or a smaller training.checkpoint_interval)"
            )
        else:
            self.logger.warning(
                f"the scheduler killed the training at its walltime; its checkpoint of epoch {epoch} is in "
                f"the remote folder: resubmit with restart_folder = its remote_folder to continue from there"
            )

    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        path = self.temporary_path(TrainCalculation.MODEL_FILE)
        if path is None:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=TrainCalculation.MODEL_FILE)
        try:
            self.out("model", PESModel(file=path))
        except ValueError as exc:
            return self.exit_codes.ERROR_OUTPUT_INVALID.format(message=str(exc))
        names = self.retrieved.base.repository.list_object_names()
        if TrainCalculation.CURVE_FILE not in names:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=TrainCalculation.CURVE_FILE)
        content = self.retrieved.base.repository.get_object_content(TrainCalculation.CURVE_FILE, mode="rb")
        self.out(
            "learning_curve", orm.SinglefileData(io.BytesIO(content), filename=TrainCalculation.CURVE_FILE)
        )
        self.out("metrics", orm.Dict(result.get("metrics", {})))
        keys = (
            "complete",
            "stop_reason",
            "epochs",
            "best_epoch",
            "best_valid_loss",
            "training_wall_time_s",
            "loss_properties",
            "n_conformations",
            "committee",
        )
        self.out("result", orm.Dict({key: result[key] for key in keys if key in result}))
        if not result.get("complete", True):
            return self.exit_codes.ERROR_TRAINING_INCOMPLETE.format(
                epoch=result.get("epochs"), best=result.get("best_epoch")
            )
        return None
