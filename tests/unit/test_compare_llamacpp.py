"""bench/compare_llamacpp.py's pure parts: parsing, commands, medians and the ratio table.

Nothing is installed or started here; `make bench-peer` runs the real comparison.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    # The benchmarks import their sibling `stack` module by name, as scripts do.
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        yield importlib.import_module("compare_llamacpp")
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))


def test_parse_clients_and_env(bench: ModuleType) -> None:
    assert bench.parse_clients("1, 4,8") == [1, 4, 8]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_clients("0,4")
    assert bench.parse_env(["MILLM_QUANTIZATION=int8_dynamic,MILLM_TORCH_THREADS=1", "A=b=c"]) == {
        "MILLM_QUANTIZATION": "int8_dynamic",
        "MILLM_TORCH_THREADS": "1",
        "A": "b=c",
    }
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_env(["MILLM_DTYPE"])


def test_parse_args_builds_variants(bench: ModuleType) -> None:
    args = bench.parse_args(
        [
            "--rounds=2",
            "--clients=1,8",
            "--threads=2",
            "--millm-env=MILLM_TORCH_THREADS=1",
            "--variant=MILLM_QUANTIZATION=int8_dynamic",
            "--variant=MILLM_DTYPE=bfloat16,MILLM_QUANTIZATION=none",
        ]
    )
    assert (args.rounds, args.clients, args.threads, args.max_tokens) == (2, [1, 8], 2, 128)
    configs = bench.millm_configs(args)
    assert [name for name, _ in configs] == [
        "miLLM",
        "miLLM quantization=int8_dynamic",
        "miLLM dtype=bfloat16,quantization=none",
    ]
    # --millm-env applies to every miLLM server, a variant adds its own on top.
    assert configs[1][1] == {"MILLM_TORCH_THREADS": "1", "MILLM_QUANTIZATION": "int8_dynamic"}
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds=0"])


def test_llama_server_command_has_slots_batching_and_threads(bench: ModuleType) -> None:
    command = bench.llama_server_command("/x/llama-server", "/m.gguf", 8080, 2, 8, 1024)
    assert command[0] == "/x/llama-server"

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("--model") == "/m.gguf"
    assert value("--port") == "8080"
    assert value("--threads") == value("--threads-batch") == "2"
    assert value("--parallel") == "8"
    assert value("--ctx-size") == str(8 * 1024)  # split evenly over the slots
    assert "--cont-batching" in command and "--jinja" in command
    assert "--no-repack" in command
    assert "--repack" in bench.llama_server_command("b", "m", 1, 1, 1, 1, repack=True)


def test_cmake_builds_only_the_server(bench: ModuleType) -> None:
    configure, build = bench.cmake_commands(Path("/s"), Path("/b"), 2)
    assert configure[:5] == ["cmake", "-S", "/s", "-B", "/b"]
    assert "-DGGML_NATIVE=ON" in configure and "-DBUILD_SHARED_LIBS=OFF" in configure
    assert build == ["cmake", "--build", "/b", "--target", "llama-server", "-j", "2"]


def test_installed_reads_the_record_only_if_the_binary_exists(
    bench: ModuleType, tmp_path: Path
) -> None:
    assert bench.installed(tmp_path) is None
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    binary = tmp_path / "venv" / "bin" / "llama-server"
    record = tmp_path / "venv" / "llama-server.json"
    record.write_text(f'{{"version": "1", "binary": "{binary}"}}')
    assert bench.installed(tmp_path) is None  # recorded, but the binary is gone
    binary.write_text("")
    assert bench.installed(tmp_path) == {"version": "1", "binary": str(binary)}


def test_percentile_median_ratio_and_decode_rate(bench: ModuleType) -> None:
    assert bench.percentile([1.0, 2.0], 0.95) == pytest.approx(1.95)
    assert bench.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert math.isnan(bench.percentile([], 0.5))
    assert bench.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(bench.ratio(1.0, 0.0))
    assert bench.ratio(3.0, 4.0) == 0.75
    # 11 tokens, the first at 1.0 s and the last at 2.0 s: 10 decoded in 1 s.
    assert bench.decode_rate(11, 1.0, 2.0) == 10.0
    assert math.isnan(bench.decode_rate(1, 1.0, 2.0))


def test_server_order_rotates(bench: ModuleType) -> None:
    names = ["llama.cpp", "miLLM", "miLLM x"]
    firsts = {bench.server_order(names, r)[0] for r in range(3)}
    assert firsts == set(names)
    assert sorted(bench.server_order(names, 4)) == sorted(names)


def _measures(bench: ModuleType, ttft: float, decode: float, agg_wall: float) -> object:
    request = bench.Request(ttft_s=ttft, tokens=128, prompt_tokens=39, decode_tok_s=decode)
    long = bench.Request(ttft_s=ttft * 10, tokens=16, prompt_tokens=512, decode_tok_s=decode)
    m = bench.Measures(short=[request, request], long=[long])
    # 4 requests of 128 tokens in agg_wall seconds.
    m.bursts[4] = [bench.Burst(agg_wall, [request] * 4)]
    return m


def test_summary_and_ratio_table(bench: ModuleType) -> None:
    summaries = {
        "llama.cpp": bench.summarise(_measures(bench, 0.2, 80.0, 4.0), [4]),
        "miLLM": bench.summarise(_measures(bench, 0.1, 40.0, 2.0), [4]),
    }
    assert summaries["miLLM"]["4 clients: aggregate tok/s"] == 256.0
    assert summaries["llama.cpp"]["TTFT ~500-token prompt, ms"] == pytest.approx(2000.0)
    lines = bench.build_table(summaries)
    header = lines[0]
    assert [c.strip() for c in header.split("|")] == [
        "metric",
        "llama.cpp",
        "miLLM",
        "miLLM/llama.cpp",
    ]
    rows = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in lines[2:]
    }
    assert rows["TTFT short, ms"] == ["200.0", "100.0", "0.50x"]
    assert rows["decode tok/s, single stream"] == ["80.0", "40.0", "0.50x"]
    assert rows["4 clients: aggregate tok/s"] == ["128.0", "256.0", "2.00x"]
    assert rows["prompt tokens, short"] == ["39", "39", ""]
    assert rows["tokens generated, single stream"][:2] == ["128", "128"]
