"""The embedding deadline grows with the batch, so a large one is not cut off (504)."""

from __future__ import annotations

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.inference_client import embed_timeout_s


def _request(*inputs: pb.EmbedInput) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=list(inputs))


def test_a_small_request_gets_about_the_base_deadline():
    assert embed_timeout_s(_request(pb.EmbedInput(text="hi")), 30.0) == 30.0 + 0.5 + 0.002


def test_the_deadline_grows_with_inputs_and_text():
    texts = [pb.EmbedInput(text="x" * 8000) for _ in range(100)]
    # 100 inputs and 800k characters: 30 + 50 + 800 s.
    assert embed_timeout_s(_request(*texts), 30.0) == 880.0


def test_token_ids_count_as_four_characters_each():
    ids = pb.EmbedInput(token_ids=pb.TokenIds(ids=list(range(2000))))
    assert embed_timeout_s(_request(ids), 30.0) == 30.0 + 0.5 + 8.0
