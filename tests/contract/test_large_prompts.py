"""Large prompts over real gRPC with the built-in model: refused quickly, and never
stalling another request's stream (tokenizing happens off the event loop)."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest

from inference_service.config import InferenceSettings
from inference_service.server import InferenceServer
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum "
# Most a stream may pause between two tokens while another request is handled, or
# a few times its own slowest step before it (a busy shared machine takes longer).
MAX_GAP_S = 1.0
BASELINE_TOKENS = 4


@pytest.fixture(scope="module")
async def stub(data_dir):
    settings = InferenceSettings(grpc_port=0, data_dir=data_dir, max_queue=4)
    server = InferenceServer(settings)
    await server.start()
    await server.wait_until_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)
    await server.stop(0)


def _text(size: int) -> str:
    return (WORDS * (size // len(WORDS) + 1))[:size]


async def _refused_beside_a_stream(stub, start: pb.GenerateStart):
    """Sends `start` while another generation streams. Returns its error, how long it
    took, the longest gap between the other stream's tokens meanwhile, and the most
    that gap may be."""
    counting = pb.GenerateStart(
        prompt="Count from one to one thousand:",
        sampling=pb.SamplingParams(temperature=0, max_tokens=2000),
    )
    other = stub.Generate(iter([pb.GenerateRequest(start=counting)]))
    arrivals: list[float] = []
    arrived = asyncio.Event()

    async def read() -> None:
        async for response in other:
            if response.HasField("delta"):
                arrivals.append(time.perf_counter())
                arrived.set()

    async def tokens_after(moment: float, count: int) -> None:
        while sum(t > moment for t in arrivals) < count:
            arrived.clear()
            await arrived.wait()

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(tokens_after(0.0, BASELINE_TOKENS), 120)
        steps = [b - a for a, b in itertools.pairwise(arrivals)]
        allowed = max(MAX_GAP_S, 3 * max(steps))
        sent = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Generate(iter([pb.GenerateRequest(start=start)])):
                pass
        answered = time.perf_counter()
        # The stream's next token after the answer shows it went on.
        await asyncio.wait_for(tokens_after(answered, 1), 60)
    finally:
        other.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    during = [t for t in arrivals if t > sent]
    gap = max(b - a for a, b in itertools.pairwise([sent, *during]))
    print(f"answered in {answered - sent:.3f} s; longest gap {gap:.3f} s (allowed {allowed:.3f})")
    return caught.value, answered - sent, gap, allowed


async def test_a_huge_chat_is_refused_at_once_without_stalling_a_stream(stub):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=_text(4_000_000))])
    error, took, gap, allowed = await _refused_beside_a_stream(stub, pb.GenerateStart(chat=chat))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum context length is 8192 tokens" in error.details()
    assert "characters, so at least" in error.details()  # the bound refused it, untokenized
    assert took < 5.0
    assert gap < allowed


async def test_a_prompt_over_the_context_only_once_tokenized_does_not_stall_a_stream(stub):
    # 200 kB passes the bound (at most ~80 characters a token) but is ~45k tokens.
    start = pb.GenerateStart(prompt=_text(200_000))
    error, _, gap, allowed = await _refused_beside_a_stream(stub, start)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the prompt has" in error.details() and "characters" not in error.details()
    assert gap < allowed


async def test_a_huge_embedding_input_is_refused_by_the_bound(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=_text(2_000_000))]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "characters, so at least" in caught.value.details()


async def test_tokenize_and_embed_still_answer(stub):
    tokens = await stub.Tokenize(pb.TokenizeRequest(text="Hello world"))
    assert len(tokens.token_ids) == len(tokens.tokens) >= 2
    embedded = await stub.Embed(
        pb.EmbedRequest(
            inputs=[
                pb.EmbedInput(text="Goodbye"),
                pb.EmbedInput(token_ids=pb.TokenIds(ids=list(tokens.token_ids))),
                pb.EmbedInput(text="Hello world"),
            ]
        )
    )
    # Text and token-id inputs keep their places: the ids embed like their text.
    goodbye, as_ids, as_text = (list(e.values) for e in embedded.embeddings)
    assert as_ids == pytest.approx(as_text, abs=1e-5)
    assert goodbye != pytest.approx(as_text, abs=1e-3)
