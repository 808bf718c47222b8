"""Numerical checks of exported files against the dygraph model: PSNR and max error per output.

PSNR follows apple/ml-stable-diffusion's ``compute_psnr``: the reference's peak absolute value over
the RMS difference, in dB. The floors every exported file must reach (issue 17):

========================  ========
file                      floor
========================  ========
fp32 (Paddle, ONNX, ML)   60 dB
fp16                      35 dB
int8 (linear)             35 dB
palettize6                25 dB
palettize4                20 dB
========================  ========
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

FLOORS = {"fp32": 60.0, "fp16": 35.0, "int8": 35.0, "palettize6": 25.0, "palettize4": 20.0}


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of ``test`` against ``reference`` (dB; inf when equal)."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(test, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"psnr: shapes differ, {ref.shape} vs {out.shape}")
    if not np.all(np.isfinite(out)):
        return float("-inf")
    rms = math.sqrt(float(((ref - out) ** 2).mean())) if ref.size else 0.0
    if rms == 0.0:
        return float("inf")
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    return 20.0 * math.log10((peak + 1e-5) / (rms + 1e-10))


def compare(reference: Dict[str, np.ndarray], test: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """Per output: ``{"psnr": dB, "max_abs_err": float}`` (outputs missing from ``test`` get -inf)."""
    res = {}
    for name, ref in reference.items():
        if name not in test:
            res[name] = {"psnr": float("-inf"), "max_abs_err": float("inf"), "missing": True}
            continue
        out = np.asarray(test[name])
        if out.shape != np.asarray(ref).shape:
            res[name] = {"psnr": float("-inf"), "max_abs_err": float("inf"),
                         "shape": [list(np.shape(ref)), list(out.shape)]}
            continue
        err = np.abs(np.asarray(ref, np.float64) - out.astype(np.float64))
        res[name] = {"psnr": round(psnr(ref, out), 2),
                     "max_abs_err": float(err.max()) if err.size and np.all(np.isfinite(err)) else float("inf")}
    return res


def worst_psnr(result: Dict[str, dict]) -> float:
    return min((r["psnr"] for r in result.values()), default=float("inf"))


def floor_for(precision: str = "fp32", compress: str = "none") -> float:
    """The PSNR floor of a file of ``precision`` (fp32 | fp16) and ``compress`` (none | palettize6 |
    palettize4 | int8): compression sets it when there is one."""
    if compress and compress != "none":
        return FLOORS[compress]
    return FLOORS[precision]


def passes(result: Dict[str, dict], floor: float) -> bool:
    return worst_psnr(result) >= floor


def describe(result: Dict[str, dict]) -> str:
    """``noise_pred 98.1 dB (max err 3e-06)`` for each output."""
    return ", ".join(f"{k} {v['psnr']:.1f} dB (max err {v['max_abs_err']:.2g})" for k, v in result.items())
