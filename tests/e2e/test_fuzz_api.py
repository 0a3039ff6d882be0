"""Schemathesis over the bridge's own OpenAPI document, against a real stack of its own:
no input may produce a 5xx, and every documented response must match its schema.

Operations that would download from the Hub, or load, unload or delete the served
model, or start SAE training, are left out: each is slow or needs the network, and
tests/e2e covers them with chosen inputs. Generation lengths are capped so a fuzzed
`max_tokens` cannot keep the CPU busy for minutes.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.fixtures.own_stack import own_stack

pytestmark = pytest.mark.e2e

_LEFT_OUT = [
    ("POST", "/api/v1/models/download"),
    ("POST", "/api/v1/models/unload"),
    ("POST", "/api/v1/models/{id}/load"),
    ("DELETE", "/api/v1/models/{id}"),
    ("POST", "/api/v1/saes/download"),
    ("POST", "/api/v1/saes/preview"),
    ("POST", "/api/v1/saes/{id}/upload"),
    ("GET", "/api/v1/sae-releases"),
    ("POST", "/api/v1/training/runs"),
    ("POST", "/api/v1/training/runs/{id}/resume"),
]
_LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MAX_GENERATED = 4


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    # A fuzzed request that leaves out max_tokens still ends quickly.
    with own_stack(root, {"MILLM_DEFAULT_MAX_TOKENS": str(_MAX_GENERATED)}) as stack:
        yield stack


def _cap_lengths(case) -> None:
    if isinstance(case.body, dict):
        for field in _LENGTH_FIELDS:
            if isinstance(case.body.get(field), int) and case.body[field] > _MAX_GENERATED:
                case.body[field] = _MAX_GENERATED


def test_no_input_gets_a_server_error(fuzz_stack):
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.http_url}/openapi.json")
    for method, path in _LEFT_OUT:
        schema = schema.exclude(method=method, path=path)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40  # the document lists the whole API

    # Each operation runs on its own, so one failure does not hide the others.
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=6,
            derandomize=True,  # the same examples on every run
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case) -> None:
            _cap_lengths(case)
            case.call_and_validate(
                checks=[not_a_server_error, response_schema_conformance], timeout=60
            )

        try:
            check()
        except Exception as exc:  # collected: one failing operation must not hide the rest
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
