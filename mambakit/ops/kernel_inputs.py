"""Checks every Triton wrapper makes before a launch: where its tensors live and what they hold.

A kernel launched on CPU tensors fails deep inside Triton ("0 active drivers"), and one launched
on tensors of two devices reads garbage or faults; a wrong dtype compiles a kernel nobody tested.
These checks turn each into a ValueError that names the op, the tensor and what was expected.
"""
from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # activations the kernels are built for


def check_kernel_tensors(op: str, tensors: dict, activations: tuple = ()) -> None:
    """tensors: name -> tensor or None (absent). All present ones must be tensors on one device,
    CUDA (or the CPU under TRITON_INTERPRET=1); those named in `activations` must be float32,
    float16 or bfloat16."""
    present = {}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        present[name] = t
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")
    for name in activations:
        t = present.get(name)
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype} "
                             "(float64 runs on the chunked path: MAMBAKIT_BACKEND=torch)")
    device = next(iter(devices), None)
    if device is not None and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{op}: the Triton kernels take CUDA tensors, got tensors on {device}; move them with "
                         ".cuda(), or use the chunked PyTorch path (MAMBAKIT_BACKEND=torch) on the CPU")
