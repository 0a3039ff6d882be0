"""Every core for the few big kernels of a CPU pass.

On a small CPU the thread default leaves one core to the gRPC server, the bridge
and the event loop (`MILLM_TORCH_THREADS` 0: README "Speed"). A decode step is a
few hundred small kernels, and with a second torch thread each of them waits for
a thread the servers preempted: served, two threads decoded 0.7x as fast as one.
A prefill's matrix products and the output layer (the largest single weight a
decode step reads: 28 MB of the built-in model's int8 output layer) are long
enough that a second thread pays: on the 2-core development machine the output
layer on both cores lifted served decode by about 8 % (34.5 against 32.0 tok/s)
and short prompts' time to first token by about 10 % (bench/compare_llamacpp.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@contextmanager
def all_cores() -> Iterator[None]:
    """Torch runs on every core inside; the thread count before comes back after."""
    before = torch.get_num_threads()
    cores = usable_cores()
    if cores <= before:
        yield
        return
    torch.set_num_threads(cores)
    try:
        yield
    finally:
        torch.set_num_threads(before)
