"""Export of the history as JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest

from inference_service.errors import InvalidArgumentError
from inference_service.monitoring.export import CSV_HEADER
from inference_service.monitoring.hub import MonitorHub, MonitoringConfig
from tests.unit.monitoring.helpers import make_capture, sparse_activations

D_SAE = 48
AWKWARD = ('a, "quoted"', "line\nbreak", "ü")


@pytest.fixture
async def hub() -> MonitorHub:
    hub = MonitorHub(asyncio.get_running_loop())
    hub.set_config(MonitoringConfig(record_history=True, top_k=2, features=(4, 9)), d_sae=D_SAE)
    for n, source in enumerate(("generate", "embed")):
        capture = make_capture(
            sparse_activations(3, D_SAE, seed=n),
            f"r{n}",
            source=source,
            captured_at_unix_ms=1000 + n,
            tokens=AWKWARD,
        )
        await asyncio.to_thread(hub.publish, capture)
    return hub


def test_json_round_trips_to_the_frames(hub):
    text, content_type = hub.export("json")

    assert content_type == "application/json"
    frames = hub.history()
    expected = [
        {
            "request_id": f.request_id,
            "source": f.source,
            "hook_name": f.hook_name,
            "captured_at_unix_ms": f.captured_at_unix_ms,
            "tokens": [
                {
                    "position": t.position,
                    "token_id": t.token_id,
                    "token": t.token,
                    "features": [{"index": v.index, "value": v.value} for v in t.features],
                    "top": [{"index": v.index, "value": v.value} for v in t.top],
                }
                for t in f.tokens
            ],
        }
        for f in frames
    ]
    assert json.loads(text) == expected
    assert [f["source"] for f in json.loads(text)] == ["generate", "embed"]


def test_csv_has_the_header_and_one_row_per_value(hub):
    text, content_type = hub.export("csv")

    assert content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(CSV_HEADER)
    expected = [
        [
            f.request_id,
            f.source,
            f.hook_name,
            str(f.captured_at_unix_ms),
            str(t.position),
            str(t.token_id),
            t.token,
            kind,
            str(v.index),
            repr(v.value),
        ]
        for f in hub.history()
        for t in f.tokens
        for kind, values in (("selected", t.features), ("top", t.top))
        for v in values
    ]
    assert rows[1:] == expected
    selected = [r for r in rows[1:] if r[7] == "selected"]
    assert len(selected) == 2 * 3 * 2  # frames x tokens x features
    assert {r[6] for r in rows[1:]} == set(AWKWARD)  # commas, quotes, newlines survive


def test_an_empty_history_exports_an_empty_list_and_a_bare_header():
    loop = asyncio.new_event_loop()
    loop.close()  # export never touches the loop
    hub = MonitorHub(loop)
    assert hub.export("json") == ("[]", "application/json")
    assert hub.export("csv") == (",".join(CSV_HEADER) + "\n", "text/csv")


def test_unknown_format_is_an_invalid_argument(hub):
    with pytest.raises(InvalidArgumentError, match="'yaml'") as caught:
        hub.export("yaml")
    assert caught.value.param == "format"
