"""TrainingService over real gRPC with the built-in model: a run trains on a corpus
the project writes, registers an SAE that SAELens loads and miLLM attaches, stops
and resumes to the same weights, yields to inference, and refuses bad input."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file

from inference_service.sae.formats import load_sae
from inference_service.training.repository import TrainingRuns
from inference_service.training.sites import capture, capture_site
from inference_service.training.types import TrainingState
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_pb2
from millm.v1 import steering_service_pb2 as stpb
from millm.v1 import steering_service_pb2_grpc as stpb_grpc
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as pb
from millm.v1 import training_service_pb2_grpc as pb_grpc
from tests.contract.test_sae_service import _expect_error
from tests.fixtures.corpus import write_jsonl
from tests.fixtures.servers import running_server

HOOK = "blocks.3.hook_resid_post"
STEPS = 24
BATCH = 256
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def small_config(**changes) -> tpb.TrainingConfig:
    values = dict(
        corpus=tpb.CorpusSource(path="corpus.jsonl"),
        hook_name=HOOK,
        architecture=tpb.TRAINING_ARCHITECTURE_TOPK,
        d_sae=256,
        k=8,
        batch_size_tokens=BATCH,
        total_tokens=BATCH * STEPS,
        context_size=32,
        harvest_batch_windows=16,
        checkpoint_every_steps=4,
        learning_rate=1e-3,
        seed=7,
    )
    values.update(changes)
    return tpb.TrainingConfig(**values)


@pytest.fixture(scope="module")
async def server(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("training-root")
    write_jsonl(root / "corpus.jsonl")
    own = tmp_path_factory.mktemp("training-service")
    async with running_server(data_dir, own, training_data_root=root) as srv:
        yield srv


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.TrainingServiceStub(channel)


async def watch_to_end(stub, run_id: str) -> tuple[tpb.TrainingRun, list[tpb.TrainingMetrics]]:
    metrics: list[tpb.TrainingMetrics] = []
    last = None
    async for update in stub.WatchTrainingRun(pb.WatchTrainingRunRequest(id=run_id)):
        metrics.extend(update.metrics)
        last = update.run
    assert last is not None
    return last, metrics


async def wait_for(stub, run_id: str, predicate, timeout_s: float = 120.0) -> tpb.TrainingRun:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        current = (await stub.GetTrainingRun(pb.GetTrainingRunRequest(id=run_id))).run
        if predicate(current):
            return current
        assert asyncio.get_running_loop().time() < deadline, current
        await asyncio.sleep(0.05)


def weights(server, sae_id: str) -> dict[str, torch.Tensor]:
    folder = server.saes.catalog.get(sae_id).folder
    return load_file(str(folder / "sae_weights.safetensors"))


@pytest.fixture(scope="module")
async def reference(server):
    """One uninterrupted run, trained once for the module, from an uploaded corpus."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.TrainingServiceStub(channel)
        data = (server.settings.training_data_root / "corpus.jsonl").read_bytes()

        async def upload():
            yield pb.UploadCorpusRequest(name="uploaded.jsonl")
            for start in range(0, len(data), 10_000):
                yield pb.UploadCorpusRequest(data=data[start : start + 10_000])

        corpus = (await stub.UploadCorpus(upload())).corpus
        config = small_config(corpus=tpb.CorpusSource(corpus_id=corpus.id))
        started = await stub.StartTraining(pb.StartTrainingRequest(name="ref", config=config))
        final, metrics = await watch_to_end(stub, started.run.id)
        return corpus, final, metrics


async def test_a_run_trains_and_registers_an_attachable_sae(server, channel, reference):
    corpus, final, metrics = reference
    assert corpus.documents == 400 and corpus.size_bytes > 0
    assert final.state == tpb.TRAINING_STATE_COMPLETED, final.error
    assert final.step == final.total_steps == STEPS
    steps = [m for m in metrics if not m.eval]
    assert [m.step for m in steps] == list(range(1, STEPS + 1))  # every step, in order, once
    assert all(m.tokens_per_s > 0 and m.l0 <= 8 for m in steps)
    assert sum(m.loss for m in steps[-4:]) < sum(m.loss for m in steps[:4])
    evals = [m for m in metrics if m.eval]
    assert [m.step for m in evals] == [4, 8, 12, 16, 20, STEPS]  # checkpoints, then final
    assert final.final_eval.fvu == evals[-1].fvu and 0 < final.final_eval.fvu < 1

    saes = spb_grpc.SaeServiceStub(channel)
    sae = (await saes.GetSae(spb.GetSaeRequest(id=final.sae_id))).sae
    assert sae.has_feature_statistics and sae.d_sae == 256 and sae.hook_name == HOOK
    # The service's metrics counted the run's steps (the first run of this server).
    trained = metric_samples(server)
    assert trained[("millm_training_steps_total", ())] == STEPS
    await saes.AttachSae(spb.AttachSaeRequest(id=sae.id))
    try:
        steering = stpb_grpc.SteeringServiceStub(channel)
        feature = steering_pb2.SteeringFeature(
            index=5, mode=steering_pb2.STEERING_MODE_ADD, strength=1.0
        )
        state = (await steering.SetSteering(stpb.SetSteeringRequest(features=[feature]))).state
        stats = load_file(str(server.saes.catalog.get(sae.id).folder / "feature_stats.safetensors"))
        assert state.max_activations[5] == pytest.approx(float(stats["max_activation"][5]))
        attached = metric_samples(server)
        assert attached[("millm_sae_attached", ())] == 1
        info = {k: v for (name, labels) in attached if name == "millm_sae_info" for k, v in labels}
        assert (info["sae_id"], info["hook"]) == (sae.id, HOOK)
        assert attached[("millm_steering_active", ())] == 1
        await steering.ClearSteering(stpb.ClearSteeringRequest())
    finally:
        await saes.DetachSae(spb.DetachSaeRequest())
    assert metric_samples(server)[("millm_sae_attached", ())] == 0


def metric_samples(server) -> dict[tuple[str, tuple], float]:
    """The service's Prometheus samples as {(name, sorted labels): value}."""
    text = generate_latest(server.metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_output_loads_in_sae_lens_and_encodes_as_miLLM_does(server, reference):
    from sae_lens import SAE

    folder = server.saes.catalog.get(reference[1].sae_id).folder
    theirs = SAE.load_from_disk(str(folder), device="cpu")
    ours = load_sae(folder)
    model = server.host.engine.loaded_model.model
    ids = await server.host.engine.encode_text_async("The quick brown fox jumps over the lazy dog.")
    # On the lane: the finished run's feature statistics may be reading the model too.
    (hidden,) = await server.host.engine.call_on_lane(
        lambda: capture(model, [capture_site(model, HOOK, "h")], torch.tensor([ids]))
    )
    x = hidden[0]
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-5, rtol=1e-5)
        assert (ours.encode(x) != 0).sum(dim=-1).max() <= 8
    frequency = load_file(str(folder / "feature_stats.safetensors"))["frequency"]
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(sparsity, torch.log10(frequency + 1e-10))


async def test_stop_then_resume_after_a_crash_gives_the_uninterrupted_weights(
    server, stub, reference
):
    started = await stub.StartTraining(pb.StartTrainingRequest(config=small_config()))
    run_id = started.run.id
    await wait_for(stub, run_id, lambda r: r.checkpoint_step >= 8)
    stopped = (await stub.StopTraining(pb.StopTrainingRequest(id=run_id))).run
    assert stopped.state in (tpb.TRAINING_STATE_STOPPING, tpb.TRAINING_STATE_STOPPED)
    stopped = await wait_for(stub, run_id, lambda r: r.state == tpb.TRAINING_STATE_STOPPED)
    assert stopped.checkpoint_step < STEPS

    # A crash instead of a stop: the newest checkpoint never got written, and the
    # record still says running. Start-up recovery marks it interrupted.
    checkpoints = sorted((server.training._run_dir(run_id) / "checkpoints").glob("step_*.pt"))
    if len(checkpoints) > 1 and int(checkpoints[-1].stem[5:]) % 4:
        checkpoints[-1].unlink()
    server.db.run(lambda session: TrainingRuns(session).update(run_id, state=TrainingState.RUNNING))
    assert server.training.recover() == 1
    interrupted = (await stub.GetTrainingRun(pb.GetTrainingRunRequest(id=run_id))).run
    assert interrupted.state == tpb.TRAINING_STATE_INTERRUPTED

    await stub.ResumeTraining(pb.ResumeTrainingRequest(id=run_id))
    final, _ = await watch_to_end(stub, run_id)
    assert final.state == tpb.TRAINING_STATE_COMPLETED, final.error
    expected = weights(server, reference[1].sae_id)
    got = weights(server, final.sae_id)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


async def test_inference_goes_first_and_is_unchanged_while_training(server, channel, stub):
    generate = ipb_grpc.InferenceServiceStub(channel)

    async def greedy() -> list[int]:
        start = ipb.GenerateStart(
            chat=ipb.ChatMessages(
                messages=[ipb.ChatMessage(role="user", content="Name a colour.")]
            ),
            sampling=ipb.SamplingParams(max_tokens=12, temperature=0.0),
        )
        tokens: list[int] = []
        async for message in generate.Generate(iter([ipb.GenerateRequest(start=start)])):
            if message.HasField("delta"):
                tokens.extend(message.delta.token_ids)
        return tokens

    alone = await greedy()
    config = small_config(total_tokens=BATCH * 2000, checkpoint_every_steps=1000)
    run_id = (await stub.StartTraining(pb.StartTrainingRequest(config=config))).run.id
    try:
        await wait_for(stub, run_id, lambda r: r.step >= 1)
        stages: list[str] = []

        async def record_stages() -> None:
            async for update in stub.WatchTrainingRun(pb.WatchTrainingRunRequest(id=run_id)):
                stages.append(update.run.stage)

        watcher = asyncio.create_task(record_stages())
        assert await greedy() == alone
        await asyncio.sleep(0.5)
        watcher.cancel()
        assert "paused for inference" in stages
        progressed = await wait_for(stub, run_id, lambda r: r.step >= 3)
        assert progressed.state == tpb.TRAINING_STATE_RUNNING  # resumed after the request
    finally:
        await stub.StopTraining(pb.StopTrainingRequest(id=run_id))
        await wait_for(stub, run_id, lambda r: r.state == tpb.TRAINING_STATE_STOPPED)
        await stub.DeleteTrainingRun(pb.DeleteTrainingRunRequest(id=run_id))


async def test_bad_configs_are_refused_with_the_field_named(stub):
    async def start(**changes):
        return await stub.StartTraining(pb.StartTrainingRequest(config=small_config(**changes)))

    await _expect_error(start(d_sae=64, k=65), INVALID, "INVALID_ARGUMENT", "width (64)")
    await _expect_error(start(learning_rate=-1.0), INVALID, "INVALID_ARGUMENT", "learning_rate")
    await _expect_error(
        start(hook_name="blocks.3.hook_attn_z"), INVALID, "INVALID_ARGUMENT", "hook_mlp_in"
    )
    await _expect_error(
        start(hook_name="blocks.40.hook_resid_post"),
        grpc.StatusCode.OUT_OF_RANGE,
        "LAYER_OUT_OF_RANGE",
        "Layer 40 does not exist. Model has 30 layers (0-29).",
    )
    await _expect_error(
        start(corpus=tpb.CorpusSource(path="../escape.jsonl")),
        INVALID,
        "INVALID_ARGUMENT",
        "inside the training data root",
    )
    await _expect_error(
        start(corpus=tpb.CorpusSource(corpus_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "nope",
    )
    await _expect_error(start(skip=True), INVALID, "INVALID_ARGUMENT", "skip needs a transcoder")
    await _expect_error(
        start(hook_name_out="blocks.3.hook_mlp_out"),
        INVALID,
        "INVALID_ARGUMENT",
        "no topk transcoder",
    )
    await _expect_error(
        stub.GetTrainingRun(pb.GetTrainingRunRequest(id="missing")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "missing",
    )


async def test_one_run_at_a_time_and_no_delete_while_training(stub, reference):
    config = small_config(total_tokens=BATCH * 2000, checkpoint_every_steps=1000)
    run_id = (await stub.StartTraining(pb.StartTrainingRequest(config=config))).run.id
    busy = grpc.StatusCode.FAILED_PRECONDITION
    try:
        await _expect_error(
            stub.StartTraining(pb.StartTrainingRequest(config=config)),
            busy,
            "TRAINING_BUSY",
            run_id,
        )
        await _expect_error(
            stub.DeleteTrainingRun(pb.DeleteTrainingRunRequest(id=run_id)),
            busy,
            "TRAINING_BUSY",
            "stop it",
        )
        await _expect_error(
            stub.ResumeTraining(pb.ResumeTrainingRequest(id=reference[1].id)),
            INVALID,
            "INVALID_ARGUMENT",
            "completed",
        )
        await wait_for(stub, run_id, lambda r: r.step >= 1)  # so the stop leaves a checkpoint
    finally:
        await stub.StopTraining(pb.StopTrainingRequest(id=run_id))
        await wait_for(stub, run_id, lambda r: r.state == tpb.TRAINING_STATE_STOPPED)
    freed = await stub.DeleteTrainingRun(pb.DeleteTrainingRunRequest(id=run_id))
    assert freed.freed_bytes > 0  # its checkpoint
    await _expect_error(
        stub.ListTrainingMetrics(pb.ListTrainingMetricsRequest(id=run_id)),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_templates_round_trip_and_start_runs(stub):
    config = small_config(architecture=tpb.TRAINING_ARCHITECTURE_JUMPRELU, l0_coefficient=0.5)
    plain = await stub.CreateTrainingTemplate(
        pb.CreateTrainingTemplateRequest(name="b-plain", config=small_config())
    )
    favourite = await stub.CreateTrainingTemplate(
        pb.CreateTrainingTemplateRequest(
            name="z-jump", description="JumpReLU at layer 3", config=config, favourite=True
        )
    )
    listed = (await stub.ListTrainingTemplates(pb.ListTrainingTemplatesRequest())).templates
    assert [t.name for t in listed][:2] == ["z-jump", "b-plain"]  # favourites first
    await _expect_error(
        stub.CreateTrainingTemplate(pb.CreateTrainingTemplateRequest(name="b-plain")),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        "b-plain",
    )

    exported = (
        await stub.ExportTrainingTemplate(
            pb.ExportTrainingTemplateRequest(id=favourite.template.id)
        )
    ).json
    document = json.loads(exported)
    assert document["schema"] == "millm.training_template/v1"
    assert document["config"]["architecture"] == "jumprelu"
    imported = await stub.ImportTrainingTemplate(
        pb.ImportTrainingTemplateRequest(json=exported, name="z-jump-2")
    )
    again = json.loads(
        (
            await stub.ExportTrainingTemplate(
                pb.ExportTrainingTemplateRequest(id=imported.template.id)
            )
        ).json
    )
    assert {**again, "name": "z-jump"} == document
    copy = await stub.DuplicateTrainingTemplate(
        pb.DuplicateTrainingTemplateRequest(id=plain.template.id)
    )
    assert copy.template.name == "b-plain (copy)"
    assert copy.template.config == plain.template.config
    renamed = await stub.UpdateTrainingTemplate(
        pb.UpdateTrainingTemplateRequest(id=copy.template.id, name="c-renamed", favourite=True)
    )
    assert renamed.template.name == "c-renamed" and renamed.template.favourite

    await _expect_error(
        stub.ImportTrainingTemplate(pb.ImportTrainingTemplateRequest(json="{not json")),
        INVALID,
        "INVALID_ARGUMENT",
        "not JSON",
    )
    bad = json.dumps({**document, "config": {**document["config"], "k": "many"}})
    await _expect_error(
        stub.ImportTrainingTemplate(pb.ImportTrainingTemplateRequest(json=bad, name="x")),
        INVALID,
        "INVALID_ARGUMENT",
        "k must be a int",
    )
    unknown = json.dumps({**document, "config": {**document["config"], "colour": "red"}})
    await _expect_error(
        stub.ImportTrainingTemplate(pb.ImportTrainingTemplateRequest(json=unknown, name="y")),
        INVALID,
        "INVALID_ARGUMENT",
        "colour",
    )
    # A run from a template takes its config, with the request's non-zero fields on top;
    # here the override makes it invalid, which proves both were read.
    await _expect_error(
        stub.StartTraining(
            pb.StartTrainingRequest(
                template_id=plain.template.id, config=tpb.TrainingConfig(k=100_000)
            )
        ),
        INVALID,
        "INVALID_ARGUMENT",
        "width (256)",
    )
    await stub.DeleteTrainingTemplate(pb.DeleteTrainingTemplateRequest(id=copy.template.id))
    await _expect_error(
        stub.GetTrainingTemplate(pb.GetTrainingTemplateRequest(id=copy.template.id)),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_a_finished_run_starts_its_feature_statistics(server, reference):
    sae_id = reference[1].sae_id
    started = [
        op
        for op in server.operations.list(limit=100, offset=0, unfinished_only=False)
        if op.kind == "feature_statistics" and op.target == sae_id
    ]
    assert len(started) == 1
