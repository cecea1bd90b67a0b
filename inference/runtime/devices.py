"""Devices: is a hardware target available here, and how threads are set for it.

A version whose target is not available is not ready, with the reason; it is never
moved silently to another device.
"""

from __future__ import annotations

import torch

from .base import ModelNotReady


def check_available(device_type: str, device_index: int = 0) -> None:
    """Raise ModelNotReady unless the device exists in this process."""
    if device_type == "cpu":
        return
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise ModelNotReady("cuda not available")
        count = torch.cuda.device_count()
        if device_index >= count:
            raise ModelNotReady(f"cuda:{device_index} not available ({count} GPU(s) here)")
        return
    if device_type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelNotReady("mps not available")
        return
    raise ModelNotReady(f"unknown device type {device_type!r}")


def device_string(device_type: str, device_index: int = 0) -> str:
    """Return the torch device string for a target ('cpu', 'cuda:0', 'mps')."""
    return f"cuda:{device_index}" if device_type == "cuda" else device_type


def use_threads(n: int) -> None:
    """Set torch's intra-op threads for the calling thread's next forward passes.

    With the OpenMP backend the count applies to the thread that sets it, so each
    batcher thread calls this before it computes (a thread's first parallel region
    would otherwise adopt whatever count another thread set last).
    """
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
