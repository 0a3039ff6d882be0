"""miLLM's own CPU kernel: 4-bit weights times 8-bit activations (engine/kernels/q4q8.c).

PyTorch's 4-bit CPU kernel turns every weight back into a float32 and multiplies it
by the activation in float32: on one core it spends about 15 vector instructions per
64 weights, and it does so again for every 4 rows. llama.cpp instead rounds the
activations to 8 bits per group of 32 and multiplies bytes with the CPU's integer
dot-product instructions (AVX512-VNNI), which is about 5 instructions per 64 weights
and shares the unpacked weights among all the rows of a call. `q4q8.c` does the same.
Measured over the built-in model's 120 decoder-layer shapes on one thread: 6.4
against 8.7 ms for one row, 9.9 against 23.8 ms for eight.

The source is compiled on first use with the machine's C compiler (a plain shared
library: no PyTorch headers, so it builds in well under a second) into
`<data_dir>/kernels/`, named by a hash of the source and flags, and called through
ctypes, which releases the GIL for the call. Where the CPU lacks the instructions,
there is no compiler, or the build fails, `load_q4q8` answers None and the 4-bit
layers take PyTorch's kernel (`MILLM_CPU_KERNELS=torch` asks for that outright).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "q4q8.c"
FLAGS = (
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512dq",
    "-mavx512vnni",
    "-mf16c",
    "-mfma",
    "-shared",
    "-fPIC",
)
# /proc/cpuinfo's names for what the kernel's instructions need.
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "f16c", "fma"})
# Output rows come in tiles of 16; inputs in groups of 32.
TILE = 16
GROUP = 32


class Q4Q8:
    """The loaded kernel: `linear(x, w, wd, wm, n)` is `x @ W.T` for a weight in the
    kernel's layout (see q4q8.c)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        function = library.q4q8_linear
        function.argtypes = [pointer, size, size, pointer, pointer, pointer, size, pointer]
        function.restype = ctypes.c_int
        self._function = function

    def __deepcopy__(self, memo: dict[int, object]) -> Q4Q8:
        return self  # a copied model shares the one loaded library

    def linear(
        self, x: torch.Tensor, w: torch.Tensor, wd: torch.Tensor, wm: torch.Tensor, n: int
    ) -> torch.Tensor:
        """`x` [rows, k] float32 -> [rows, n] float32."""
        x = x.contiguous()
        rows, k = x.shape
        out = torch.empty(rows, n, dtype=torch.float32)
        failed = self._function(
            x.data_ptr(), rows, k, w.data_ptr(), wd.data_ptr(), wm.data_ptr(), n, out.data_ptr()
        )
        if failed:
            raise MemoryError("the 4-bit kernel could not allocate its scratch memory")
        return out


def pack(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The kernel's layout of 4-bit values `q` [n, k] (uint8, 0..15) with per-group
    `scale` and `minimum` [n, k / 32] (float16): (w, wd, wm), each with the tiles of 16
    output rows first, so joining layers' outputs is concatenating along dim 0."""
    n, k = q.shape
    groups = k // GROUP
    # [tile, row in tile, group, load j, low/high half, byte b] -> [tile, group, j, row, b]
    split = q.view(n // TILE, TILE, groups, 4, 2, 4)
    packed = split[..., 0, :] | (split[..., 1, :] << 4)
    w = packed.permute(0, 2, 3, 1, 4).contiguous()
    wd, wm = (
        t.view(n // TILE, TILE, groups).transpose(1, 2).contiguous() for t in (scale, minimum)
    )
    return w, wd, wm


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where it does not say)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def load_q4q8(build_dir: Path) -> Q4Q8 | None:
    """The kernel, built into `build_dir` if need be, or None where it cannot run here
    (the reason is logged once)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        log.info("4-bit kernel: PyTorch's (miLLM's own needs Linux on x86-64)")
        return None
    missing = CPU_FLAGS - cpu_flags()
    if missing:
        log.info("4-bit kernel: PyTorch's (the CPU lacks %s)", ", ".join(sorted(missing)))
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        log.warning("4-bit kernel: PyTorch's (no C compiler: install gcc for a faster one)")
        return None
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = build_dir / f"q4q8-{digest}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        kernel = Q4Q8(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("4-bit kernel: PyTorch's (building %s failed: %s)", SOURCE.name, exc)
        return None
    log.info("4-bit kernel: miLLM's AVX512-VNNI kernel (%s)", target)
    return kernel


def _build(compiler: str, target: Path) -> None:
    """Compiles into a temporary file beside `target`, then renames it: processes that
    build at once each finish with a whole library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(handle)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", temporary],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(temporary, target)
    except subprocess.CalledProcessError as exc:
        raise subprocess.SubprocessError(exc.stderr.strip()[-500:]) from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
