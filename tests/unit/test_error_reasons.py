"""Every machine-readable error reason written in the code is one `errors.proto` declares.

Reasons travel as strings (the `google.rpc.ErrorInfo` reason, the bridge's error
table keys), so a typo on either side would silently fall through to a generic
500; this reads the sources of both processes and checks them against the enum.
"""

from __future__ import annotations

import re
from pathlib import Path

from millm.v1 import errors_pb2

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = (
    re.compile(r'\breason\s*=\s*"([A-Z_]+)"'),  # class attribute or keyword argument
    re.compile(r'StatusCode\.[A-Z_]+,\s*"([A-Z_]+)"'),  # InferenceError(code, reason, ...)
    re.compile(r'\(Code\.[A-Z_]+,\s*"([A-Z_]+)"\)'),  # the bridge's (code, reason) table keys
)
DECLARED = {
    name.removeprefix("ERROR_REASON_")
    for name in errors_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values_by_name
    if name != "ERROR_REASON_UNSPECIFIED"
}


def _written_reasons(package: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text()
        for pattern in PATTERNS:
            for reason in pattern.findall(text):
                found.setdefault(reason, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_service_only_sends_declared_reasons():
    written = _written_reasons("inference_service")
    assert len(written) > 10, "the patterns no longer find the service's reasons"
    undeclared = {r: where for r, where in written.items() if r not in DECLARED}
    assert not undeclared, f"reasons missing from errors.proto: {undeclared}"


def test_the_bridge_only_maps_and_raises_declared_reasons():
    written = _written_reasons("openai_bridge")
    assert len(written) > 5, "the patterns no longer find the bridge's reasons"
    undeclared = {r: where for r, where in written.items() if r not in DECLARED}
    assert not undeclared, f"reasons missing from errors.proto: {undeclared}"


def test_every_declared_reason_is_sent_somewhere():
    sent = set(_written_reasons("inference_service")) | set(_written_reasons("openai_bridge"))
    assert DECLARED - sent == set()
