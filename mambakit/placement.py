"""The dtype and device arguments of the public API (load, allocate_cache): what a user may write
for them, checked before any work, with errors that say what is accepted. No tensors here."""
from __future__ import annotations

import torch

# Names a user may give for a dtype (the CLI's spellings and torch's).
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def resolve_dtype(dtype):
    """None, a floating torch.dtype, or one of DTYPE_NAMES (also as "torch.bfloat16") -> torch.dtype or None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not known; expected a floating torch.dtype or one of "
                             f"{', '.join(DTYPE_NAMES)}")
        return DTYPE_NAMES[name]
    if not isinstance(dtype, torch.dtype) or dtype not in set(DTYPE_NAMES.values()):
        # float8 kinds are floating too, but no matmul or state update of ours runs in them
        raise ValueError(f"dtype must be one of torch.float16, torch.bfloat16, torch.float32, torch.float64 "
                         f"(or its name), got {dtype!r}")
    return dtype


def resolve_device(device):
    """None, a torch.device or its spelling -> torch.device or None; CUDA only where torch has a GPU."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device torch knows ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "torch here is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {device!r}: {why}; use device='cpu'")
    return dev
