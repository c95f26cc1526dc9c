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
    float16 or bfloat16.

    Eager decoding calls this for every layer and token: CUDA tensors are compared by their device
    index (an int, cheaper than torch.device objects); only tensors off CUDA, the rare case, are
    compared by device."""
    present = [(name, t) for name, t in tensors.items() if t is not None]
    index = None
    for name, t in present:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        i = t.get_device()  # -1 off CUDA
        if index is None:
            index = i
        elif i != index:
            _several_devices(op, present)
    off_cuda = index is not None and index < 0
    if off_cuda and len({t.device for _, t in present}) > 1:  # e.g. the CPU and "meta": both -1
        _several_devices(op, present)
    for name in activations:
        t = tensors.get(name)
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype} "
                             "(float64 runs on the chunked path: MAMBAKIT_BACKEND=torch)")
    if off_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{op}: the Triton kernels take CUDA tensors, got tensors on {present[0][1].device}; move "
                         "them with .cuda(), or use the chunked PyTorch path (MAMBAKIT_BACKEND=torch) on the CPU")


def _several_devices(op: str, present: list) -> None:
    where = ", ".join(f"{name} on {t.device}" for name, t in present)
    raise ValueError(f"{op}: all tensors must be on one device, got {where}")
