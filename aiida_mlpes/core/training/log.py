"""CSV learning-curve log: one row per epoch, validation columns filled every ``validation_interval``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _csv import Writer


def curve_columns(properties: Sequence[str]) -> list[str]:
    """Column names for the loss properties (MAE in eV, eV/A, e*A or e)."""
    columns = ["epoch", "lr", "wall_time_s", "train_loss"]
    for name in properties:
        columns += [f"train_loss_{name}", f"train_mae_{name}"]
    columns.append("valid_loss")
    for name in properties:
        columns += [f"valid_mae_{name}", f"valid_rmse_{name}"]
    columns.append("best")
    return columns


class CurveLog:
    """Append-only CSV writer; :meth:`truncate` drops rows after a resumed checkpoint's epoch."""

    def __init__(self, path: Path, properties: Sequence[str]) -> None:
        self.path = Path(path)
        self.properties = list(properties)
        self.columns = curve_columns(properties)
        self._handle: IO[str] | None = None
        self._writer: Writer | None = None

    def start(self) -> None:
        """Start a new file (overwrites)."""
        stream, writer = self._open("w")
        writer.writerow(self.columns)
        stream.flush()

    def truncate(self, epoch: int) -> None:
        """Keep rows up to ``epoch`` (inclusive) of an existing log and continue appending."""
        rows = []
        if self.path.exists():
            with self.path.open(newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header == self.columns:
                    rows = [row for row in reader if row and int(row[0]) <= epoch]
        stream, writer = self._open("w")
        writer.writerow(self.columns)
        writer.writerows(rows)
        stream.flush()

    def _open(self, mode: str) -> tuple[IO[str], Writer]:
        stream = self.path.open(mode, newline="")
        writer = csv.writer(stream)
        self._handle, self._writer = stream, writer
        return stream, writer

    def append(
        self,
        epoch: int,
        lr: float,
        wall_time: float,
        train_stats: Sequence[float],
        valid_loss: float | None,
        valid_metrics: dict[str, dict[str, float]],
        best: bool,
    ) -> None:
        """Write one epoch: ``train_stats`` = [loss, (loss_p, mae_p) per property]."""
        row = [epoch, f"{lr:.6g}", f"{wall_time:.3f}", *[f"{v:.8g}" for v in train_stats]]
        row.append("" if valid_loss is None else f"{valid_loss:.8g}")
        for name in self.properties:
            metric = valid_metrics.get(name)
            row += ["", ""] if metric is None else [f"{metric['mae']:.8g}", f"{metric['rmse']:.8g}"]
        row.append(int(best))
        if self._handle is None or self._writer is None:
            raise RuntimeError("CurveLog.append: call start() or truncate() first (or the log was closed)")
        self._writer.writerow(row)
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_curve(path: str | Path) -> dict[str, list[float]]:
    """The learning curve as columns of floats (NaN where a cell is empty)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            for name, value in row.items():
                columns[name].append(float(value) if value not in ("", None) else float("nan"))
    return columns
