"""Where the time of one model call goes, and the throughput ceiling that follows on this machine, now.

Runs one call of the model (energies only, as DMC does, or energies and forces) on B copies of a molecule
under ``torch.profiler`` and splits this process's time into matrix products (``addmm``/``mm``/``bmm``/
``baddbmm``: the network's arithmetic), activations (``softplus``/``silu`` and their backward) and the rest
(element-wise products and sums, the pair geometry, Python and dispatch overhead). With the profiler's
FLOP count of the matrix products it gives the GEMM rate reached on this machine (GFLOP/s per thread) and
two ceilings in structures per second per core: the matrix products alone (nothing can be faster without
fewer FLOPs) and matrix products plus activations (the two parts no restructuring of the Python code
removes). Issue 11's targets can be read against them: a target above the ceiling times the cores is out
of reach for this architecture and size on this hardware, whatever the code around the network does.

Profiler times are wall-clock per operation: on a shared machine the fractions are reliable, the absolute
times less so. The shares are therefore applied to the best CPU time per call measured without the profiler.

    .venv/bin/python benchmarks/roofline.py [--structures 1000] [--forces]

Nothing here is asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

GEMM = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")
ACTIVATION = ("aten::softplus", "aten::softplus_backward", "aten::silu", "aten::silu_backward")
NH3 = np.array(
    [[0.0, 0.0, 0.0975], [0.9441, 0.0, -0.2692], [-0.4720, 0.8176, -0.2692], [-0.4720, -0.8176, -0.2692]]
)


def molecule_batch(numbers: np.ndarray, positions: np.ndarray, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A collate dict of B copies (positions (B, n, 3), Angstrom) of one neutral molecule."""
    b, n = positions.shape[:2]
    return {
        "atomic_numbers": torch.as_tensor(numbers).repeat(b),
        "batch": torch.arange(b).repeat_interleave(n),
        "n_atoms": torch.full((b,), n),
        "charge": torch.zeros(b, dtype=dtype),
        "positions": torch.as_tensor(positions.reshape(-1, 3), dtype=dtype),
    }


def _replay(events: list[tuple[str, list]], dtype: torch.dtype, repeats: int = 3) -> float:
    """Best CPU seconds of running only ``events`` (operation name, input shapes) on random tensors."""
    tensors = [
        [torch.rand(shape, dtype=dtype) if shape else None for shape in shapes] for _, shapes in events
    ]
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for (name, _), args in zip(events, tensors, strict=True):
            if name == "aten::addmm":
                torch.addmm(args[0], args[1], args[2])
            elif name == "aten::mm":
                torch.mm(args[0], args[1])
            elif name == "aten::bmm":
                torch.bmm(args[0], args[1])
            elif name == "aten::baddbmm":
                torch.baddbmm(args[0], args[1], args[2])
            elif name in ("aten::softplus", "aten::silu"):
                getattr(torch.nn.functional, name.split("::")[1])(args[0])
            elif name == "aten::softplus_backward":
                torch.ops.aten.softplus_backward(args[0], args[1], 1.0, 20.0)
            elif name == "aten::silu_backward":
                torch.ops.aten.silu_backward(args[0], args[1])
        best = min(best, time.process_time() - start)
    return best


def breakdown(model, batch: dict[str, torch.Tensor], forces: bool, repeats: int = 5) -> dict[str, float]:
    """:func:`call_breakdown` of one model call (energies only in inference mode, or energies and forces)."""

    def call() -> None:
        if forces:
            model(batch, compute_forces=True)
        else:
            with torch.inference_mode():
                model(batch, compute_forces=False)

    return call_breakdown(call, model.dtype, repeats)


def training_step_breakdown(model, batch: dict[str, torch.Tensor], repeats: int = 5) -> dict[str, float]:
    """:func:`call_breakdown` of one training step: energies and forces with ``create_graph``, a squared
    error loss on both, and its backward to the parameters (the optimizer step is not included)."""

    def call() -> None:
        out = model(batch, compute_forces=True, create_graph=True)
        loss = out["energy"].square().mean() + out["forces"].square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return call_breakdown(call, model.dtype, repeats)


def call_breakdown(call, dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Best CPU seconds of ``call()``; its matrix products and activations (recorded by the profiler with
    their shapes) replayed alone on random tensors (best CPU seconds); their FLOPs."""
    call()
    cpu = []
    for _ in range(repeats):
        start = time.process_time()
        call()
        cpu.append(time.process_time() - start)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        call()
    gemms, activations, flops = [], [], 0.0
    for event in prof.events():
        shapes = [list(s) for s in event.input_shapes]
        if event.name in GEMM:
            gemms.append((event.name, shapes))
            flops += event.flops or 0.0
        elif event.name in ACTIVATION:
            activations.append((event.name, shapes))
    with torch.inference_mode():
        gemm_s = _replay(gemms, dtype)
        activation_s = _replay(activations, dtype)
    return {"cpu_s": min(cpu), "gemm_s": gemm_s, "activation_s": activation_s, "gemm_flop": flops}


def report(label: str, model, numbers: np.ndarray, geometry: np.ndarray, n: int, forces: bool) -> dict:
    """Print the breakdown of one call on ``n`` structures (1 thread) and the ceilings; return it."""
    rng = np.random.default_rng(0)
    positions = geometry[None] + 0.05 * rng.normal(size=(n, *geometry.shape))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = breakdown(model, molecule_batch(numbers, positions, model.dtype), forces)
    finally:
        torch.set_num_threads(previous)
    rest = out["cpu_s"] - out["gemm_s"] - out["activation_s"]
    rate = out["gemm_flop"] / out["gemm_s"] / 1e9 if out["gemm_s"] else float("nan")
    what = "energy+forces" if forces else "energies"
    print(
        f"{label}: {what} of {n} structures, 1 thread: {out['cpu_s'] * 1e3:.1f} ms CPU "
        f"({n / out['cpu_s']:,.0f}/s); replayed alone: matrix products {out['gemm_s'] * 1e3:.1f} ms "
        f"({out['gemm_flop'] / n / 1e6:.1f} MFLOP per structure at {rate:.0f} GFLOP/s), activations "
        f"{out['activation_s'] * 1e3:.1f} ms, the rest of the call {rest * 1e3:.1f} ms"
    )
    print(
        f"{'':4s}ceiling per core: {n / out['gemm_s']:,.0f}/s (matrix products alone), "
        f"{n / (out['gemm_s'] + out['activation_s']):,.0f}/s (plus activations)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=1000)
    parser.add_argument("--forces", action="store_true", help="energies and forces instead of energies")
    args = parser.parse_args()
    from aiida_mlpes.core.models import ModelConfig, build_model

    load = os.getloadavg()
    print(f"torch {torch.__version__}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    numbers = np.array([7, 1, 1, 1])
    for label, config in (
        ("PhysNet 128/64/5", ModelConfig(elements=[1, 7], n_features=128, n_rbf=64, n_blocks=5)),
        ("PhysNet 64/32/2 (default)", ModelConfig(elements=[1, 7])),
        (
            "PaiNN 128/64/5",
            ModelConfig(architecture="painn", elements=[1, 7], n_features=128, n_rbf=64, n_blocks=5),
        ),
    ):
        report(label, build_model(config).eval(), numbers, NH3, args.structures, args.forces)


if __name__ == "__main__":
    main()
