"""The CPU linear-layer layout engine/cpu_linear.py picks, against PyTorch's stock one.

For the built-in model's layer shapes and 1 to 64 rows (a decode batch), the time of
`nn.functional.linear(x, W)` (x @ W.T) and of (W @ x.T).T, side by side, with the
speed-up. Interleaved repetitions; medians.

Run: .venv/bin/python bench/linear_layout.py [repetitions]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

SHAPES = {  # (out, in) of SmolLM2-135M's linear layers
    "q/o projection": (576, 576),
    "k/v projection": (192, 576),
    "mlp up/gate": (1536, 576),
    "mlp down": (576, 1536),
    "output layer": (49152, 576),
}
ROWS = (1, 2, 4, 8, 16, 32, 64)


def seconds(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def main() -> None:
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"threads={torch.get_num_threads()}; microseconds per call, median of {repetitions}")
    print(f"{'layer':<15} {'rows':>4} {'x @ W.T':>10} {'(W @ x.T).T':>12} {'speed-up':>9}")
    for name, (out, inp) in SHAPES.items():
        weight = torch.randn(out, inp)
        calls = 3 if out > 10_000 else 100
        for rows in ROWS:
            x = torch.randn(rows, inp)
            stock = lambda x=x, w=weight: torch.nn.functional.linear(x, w)  # noqa: E731
            layout = lambda x=x, w=weight: torch.mm(w, x.T).T.contiguous()  # noqa: E731
            stock(), layout()  # warm-up
            a, b = [], []
            for _ in range(repetitions):
                a.append(seconds(stock, calls))
                b.append(seconds(layout, calls))
            a_us, b_us = statistics.median(a) * 1e6, statistics.median(b) * 1e6
            print(f"{name:<15} {rows:>4} {a_us:>10.0f} {b_us:>12.0f} {a_us / b_us:>8.2f}x")


if __name__ == "__main__":
    main()
