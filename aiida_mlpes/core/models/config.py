"""Model hyperparameters as one typed, serialisable dataclass (stored with the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ase.data import chemical_symbols

ARCHITECTURES = ("physnet", "painn")
DTYPES = ("float32", "float64")


@dataclass
class ModelConfig:
    """Hyperparameters of a PhysNet or PaiNN model.

    Args:
        architecture: ``"physnet"`` (Unke & Meuwly 2019) or ``"painn"`` (Schütt et al. 2021).
        elements: atomic numbers the model knows (sorted, unique); other elements raise at prediction time.
        cutoff: radial cutoff of the message passing, Angstrom.
        n_features: width of the atomic features (default 64; Asparagus uses 128).
        n_rbf: number of radial basis functions (default 32; Asparagus 64).
        n_blocks: number of interaction blocks, PhysNet modules / PaiNN message+update blocks (default 2;
            Asparagus 5). The compact default trains to a lower NH3 test error within a fixed wall time and
            evaluates ~6x faster (see docs/models.md); raise all three for larger, more varied data.
        dtype: ``"float32"`` (default, fast) or ``"float64"``; reference energies are always added in float64.
        predict_charges: predict atomic charges (constrained to the total charge) and the dipole.
        electrostatics: add the shielded Coulomb energy between predicted charges (needs ``predict_charges``).
        dispersion: add Grimme D3(BJ) dispersion through the optional ``tad-dftd3`` package.
        dispersion_functional: functional whose D3(BJ) parameters are used when ``dispersion`` is on.
        charge_embedding: add the molecule's total charge (e) to the atomic embedding, so the total charge is
            an input of the representation and not only of the charge constraint.
        n_residual_interaction, n_residual_atomic, n_residual_output: PhysNet residual layers per block.
        activation: ``"shifted_softplus"`` (PhysNet) or ``"silu"`` (PaiNN).
        short_range_cutoff: Angstrom; the Coulomb term is shielded (1/sqrt(r^2+1)) below it and switches
            smoothly to 1/r (PhysNet's phi(2r) switch uses ``cutoff / 2``; ``None`` means that).
        all_pairs_max_atoms: molecules up to this size use all intramolecular pairs (cheapest for small
            molecules); larger ones use a vesin-torch neighbour list.
    """

    architecture: str = "physnet"
    elements: list[int] = field(default_factory=list)
    cutoff: float = 8.0
    n_features: int = 64
    n_rbf: int = 32
    n_blocks: int = 2
    dtype: str = "float32"
    predict_charges: bool = True
    electrostatics: bool = True
    dispersion: bool = False
    dispersion_functional: str = "pbe"
    charge_embedding: bool = True
    n_residual_interaction: int = 3
    n_residual_atomic: int = 2
    n_residual_output: int = 1
    activation: str = ""
    short_range_cutoff: float | None = None
    all_pairs_max_atoms: int = 64

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        elements = sorted({int(z) for z in self.elements})
        if not elements:
            raise ValueError("elements must list the atomic numbers the model is trained on (got none)")
        bad = [z for z in elements if not 0 < z < len(chemical_symbols)]
        if bad:
            raise ValueError(f"elements contains invalid atomic numbers {bad}")
        self.elements = elements
        if not self.activation:
            self.activation = "shifted_softplus" if self.architecture == "physnet" else "silu"
        if self.activation not in ("shifted_softplus", "silu"):
            raise ValueError(f"activation must be 'shifted_softplus' or 'silu', got {self.activation!r}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Angstrom), got {self.cutoff}")
        for name in ("n_features", "n_rbf", "n_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.electrostatics and not self.predict_charges:
            self.electrostatics = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON and ``torch.load(weights_only=True)`` safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys raise a ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)
