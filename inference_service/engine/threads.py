"""Every core for the few long kernels of a CPU decode step.

On a small CPU the thread default leaves one core to the gRPC server, the bridge
and the event loop (`MILLM_TORCH_THREADS` 0: README "Speed"). A pass of many
kernels must stay on those threads: with a second torch thread each kernel waits
at its barrier for a thread the servers preempted. Served, two threads decoded
0.7x as fast as one; a 48-token prefill on both cores took 56 ms on an idle
machine but 640 ms while another process kept the second core busy (82 ms on one
thread either way), and served, prefills on one thread lowered the short prompt's
time to first token from 115 to 95 ms and the 8-client p95 from 839 to 735 ms
(bench/compare_llamacpp.py). One kernel a step is long enough for a second
thread to pay: the output layer (28 MB of the built-in model's int8 output
layer, the largest weight a step reads) on both cores lifted served decode by
about 9 % (50.9 against 46.7 tok/s single-stream). So does a monitored request's
SAE encoder (38 MB of float32 weights at 16,384 features; steering/runtime.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@functools.cache
def usable_cores() -> int:
    """The cores this process may run on (read once: the decode step asks every step)."""
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
