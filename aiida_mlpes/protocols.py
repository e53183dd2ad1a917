"""Protocols ``fast``, ``moderate`` and ``precise`` of our own stages, from one file.

``workflows/protocols/construct_pes.yaml`` holds, per protocol, the loop's ``settings`` and the inputs of the
``sample``, ``train`` and ``characterize`` stages; each stage's ``get_builder_from_protocol`` reads its own section,
so a stage run alone and the same stage inside ``ConstructPESWorkChain`` get the same values. Overrides are merged
into the protocol's values; a key the protocol does not have is an error that names it, and the values are checked
by the stage's typed settings (``LoopSettings``, ``TrainingConfig``, ``ModelConfig``, the sampler and task checks).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

PROTOCOL_FILE = pathlib.Path(__file__).parent / "workflows" / "protocols" / "construct_pes.yaml"
#: Top-level keys of a protocol and what they hold.
SECTIONS = ("settings", "sample", "train", "characterize", "options")


def deep_merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """``left`` updated recursively by ``right`` (a copy; dicts are merged, other values replaced)."""
    out = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _data() -> dict[str, Any]:
    return yaml.safe_load(PROTOCOL_FILE.read_text())


def available_protocols() -> dict[str, dict[str, str]]:
    """Protocol names with their descriptions."""
    return {name: {"description": p["description"]} for name, p in _data()["protocols"].items()}


def default_protocol() -> str:
    return str(_data()["default_protocol"])


def protocol_inputs(protocol: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """All sections of ``protocol`` (default: ``moderate``) merged with ``overrides``, validated."""
    data = _data()
    name = protocol or data["default_protocol"]
    if name not in data["protocols"]:
        raise ValueError(f"protocol {name!r} unknown; choose one of {sorted(data['protocols'])}")
    chosen = {k: v for k, v in data["protocols"][name].items() if k != "description"}
    inputs = deep_merge(data["default_inputs"], chosen)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SECTIONS))
    if unknown:
        raise ValueError(f"overrides: unknown keys {unknown}; known: {list(SECTIONS)}")
    for section in ("sample", "train", "characterize"):
        extra = sorted(set(overrides.get(section) or {}) - set(inputs[section]))
        if extra:
            raise ValueError(f"overrides.{section}: unknown keys {extra}; known: {sorted(inputs[section])}")
    inputs = deep_merge(inputs, overrides)
    validate(inputs)
    return inputs


def validate(inputs: dict[str, Any]) -> None:
    """Check every section with its typed settings; ``ValueError`` naming the first problem."""
    from aiida_mlpes.core.characterize.task import check_tasks
    from aiida_mlpes.core.convergence import LoopSettings
    from aiida_mlpes.core.models import ModelConfig
    from aiida_mlpes.core.sampling.task import check_sample_settings
    from aiida_mlpes.core.training import TrainingConfig

    LoopSettings.from_dict(inputs["settings"])
    train = inputs["train"]
    try:
        TrainingConfig.from_dict(dict(train.get("training") or {}))
        ModelConfig.from_dict({"elements": [1], **dict(train.get("model") or {})})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"train: {exc}") from None
    try:
        check_sample_settings(dict(inputs["sample"]))
    except ValueError as exc:
        raise ValueError(f"sample: {exc}") from None
    try:
        check_tasks(inputs["characterize"]["tasks"], has_ts=True)
    except ValueError as exc:
        raise ValueError(f"characterize: {exc}") from None


def stage_inputs(
    section: str, protocol: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``section`` of ``protocol`` with ``overrides`` (for that section) and the CalcJob options."""
    inputs = protocol_inputs(protocol, {section: overrides} if overrides else None)
    return inputs[section], dict(inputs.get("options") or {})


class StageProtocolMixin:
    """``get_available_protocols`` / ``get_protocol_inputs`` for a stage whose protocol section is ``SECTION``."""

    PROTOCOL_SECTION = ""

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict[str, str]]:
        return available_protocols()

    @classmethod
    def get_protocol_inputs(
        cls, protocol: str | None = None, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """This stage's inputs in ``protocol`` merged with ``overrides`` (unknown keys are named errors)."""
        return stage_inputs(cls.PROTOCOL_SECTION, protocol, overrides)[0]
