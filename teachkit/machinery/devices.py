"""Where to train and at which precision: CUDA, then Apple MPS, then CPU; bf16 where it is fast.

bf16 halves the bytes moved per number and, on hardware with bf16 matrix units (NVIDIA Ampere
and later, Intel CPUs with AMX or AVX512-BF16), multiplies matrices several times faster than
fp32. On CPUs without those units bf16 is emulated and slower, so it is detected, not assumed.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")


class DeviceError(ValueError):
    """A device or precision that this machine cannot provide."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU. 'cuda:1' selects a GPU by number."""
    kind = name.split(":")[0]
    if kind not in DEVICE_NAMES:
        raise DeviceError(f"Unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)} (or 'cuda:N').")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"Device {name!r} was asked for, but this machine has no CUDA GPU that PyTorch can use "
            f"(torch {torch.__version__}). Use device='auto' or 'cpu'; on Binder and most laptops training runs on the CPU."
        )
    if kind == "cuda" and ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceError(
            f"Device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
        )
    if kind == "mps" and not _mps_available():
        raise DeviceError("Device 'mps' needs an Apple-silicon Mac with PyTorch's MPS backend; use 'auto' or 'cpu'.")
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (Intel AMX or AVX512-BF16)."""
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_precision(device: torch.device, name: str = "auto") -> str:
    """'bf16' or 'fp32'. 'auto' chooses bf16 only where the hardware runs it fast."""
    if name not in PRECISIONS:
        raise DeviceError(f"Unknown precision {name!r}; use one of {', '.join(PRECISIONS)}.")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """A context that runs matrix multiplies in bf16 (weights and optimizer stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
