"""Saving and loading models: round trip, metadata, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_mlpes.core.models import ModelConfig, ModelFileError, build_model, collate, load_model, save_model
from aiida_mlpes.core.ragged import RaggedArrays

NH3 = np.array([[0.0, 0.0, 0.12], [0.94, 0.0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]])


@pytest.mark.parametrize("arch", ["physnet", "painn"])
def test_round_trip_identical(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture=arch, elements=[1, 7], n_features=16, n_rbf=8, n_blocks=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_reference([-13.1, -1486.2], 0.5)
    path = save_model(model, tmp_path / "model.pt", metadata={"trained_on": "test"})
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.metadata["trained_on"] == "test"
    assert loaded.metadata["versions"]["torch"] == torch.__version__
    assert float(loaded.energy_scale) == 0.5
    batch = collate(RaggedArrays([4], [7, 1, 1, 1], NH3), dtype=torch.float32)
    a, b = model(batch), loaded(batch)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_config_round_trip_and_validation():
    cfg = ModelConfig(architecture="painn", elements=[8, 1, 1], cutoff=5.0)
    assert cfg.elements == [1, 8]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="schnet", elements=[1])
    with pytest.raises(ValueError, match="elements"):
        ModelConfig(elements=[])
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"elements": [1], "n_layers": 3})


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(bad)
    model = build_model(ModelConfig(elements=[1], n_features=8, n_rbf=4, n_blocks=1))
    good = save_model(model, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not an aiida-mlpes model"):
        load_model(foreign)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    assert issubclass(ModelFileError, ValueError)
