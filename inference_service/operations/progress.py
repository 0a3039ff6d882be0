"""Transfer speed and ETA from progress samples, smoothed over a short window."""

from __future__ import annotations

import time
from collections import deque


class RateMeter:
    """Bytes per second over the last `window_s` seconds of samples."""

    def __init__(self, window_s: float = 3.0, clock=time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, bytes_done: int) -> float:
        now = self._clock()
        self._samples.append((now, bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return max(b1 - b0, 0) / (t1 - t0) if t1 > t0 else 0.0


def eta_seconds(bytes_done: int, bytes_total: int, bytes_per_s: float) -> float | None:
    if bytes_total <= 0 or bytes_per_s <= 0:
        return None
    return max(bytes_total - bytes_done, 0) / bytes_per_s
