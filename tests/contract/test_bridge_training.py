"""The training API end to end: an in-memory TrainingService on a real grpc.aio server
(with the real ErrorInterceptor), the real gRPC clients and app, served by real uvicorn,
driven over real HTTP and a real WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.protobuf import json_format
from websockets.asyncio.client import connect

from inference_service import errors as domain
from inference_service.interceptors import ErrorInterceptor
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as tspb
from millm.v1 import training_service_pb2_grpc as tspb_grpc
from tests.contract.test_bridge_management import read_until_closed, serve_bridge

HOOK = "blocks.6.hook_resid_post"
T0 = 1_700_000_000_000
MiB = 1 << 20
TEMPLATE_SCHEMA = "millm.training_template/v1"


def error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def metrics(step: int, **fields) -> tpb.TrainingMetrics:
    return tpb.TrainingMetrics(
        step=step,
        tokens=step * 4096,
        loss=fields.pop("loss", 1.0 / step),
        mse=0.5,
        l0=32.0,
        dead_features=fields.pop("dead_features", 0),
        learning_rate=0.0004,
        time_unix_ms=T0 + step,
        **fields,
    )


def snapshot(run: tpb.TrainingRun, **fields) -> tpb.TrainingRun:
    copy = tpb.TrainingRun()
    copy.CopyFrom(run)
    for name, value in fields.items():
        if isinstance(value, tpb.TrainingMetrics):
            getattr(copy, name).CopyFrom(value)
        else:
            setattr(copy, name, value)
    return copy


def with_defaults(config: tpb.TrainingConfig) -> tpb.TrainingConfig:
    """What the real service does with zeros, for the fields these tests look at."""
    filled = tpb.TrainingConfig()
    filled.CopyFrom(config)
    if not filled.hook_name:
        raise domain.InvalidArgumentError("`hook_name` is required.", param="config.hook_name")
    filled.architecture = filled.architecture or tpb.TRAINING_ARCHITECTURE_TOPK
    filled.expansion_factor = filled.expansion_factor or (0 if filled.d_sae else 8)
    filled.k = filled.k or 32
    filled.learning_rate = filled.learning_rate or 4e-4
    filled.batch_size_tokens = filled.batch_size_tokens or 4096
    return filled


class FakeTraining(tspb_grpc.TrainingServiceServicer):
    """Runs, corpora and templates in memory, failing the way the real servicer does.

    Every request is recorded in `requests` (an upload as its list of messages).
    WatchTrainingRun sends `watch_script` in order: each entry is a run snapshot
    (sent with the metrics in `watch_metrics` under the same index), an exception
    to raise there, or "hang" to wait until cancelled.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list = []
        self.runs: dict[str, tpb.TrainingRun] = {}
        self.metrics: dict[str, list[tpb.TrainingMetrics]] = {}
        self.corpora: dict[str, tpb.Corpus] = {}
        self.corpus_bytes: dict[str, bytes] = {}
        self.templates: dict[str, tpb.TrainingTemplate] = {}
        self.watch_script: list = []
        self.watch_metrics: dict[int, list[tpb.TrainingMetrics]] = {}
        self.watch_cancelled = asyncio.Event()
        self._ids = 0

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def _run(self, id_: str) -> tpb.TrainingRun:
        if id_ not in self.runs:
            raise domain.NotFoundError(f"No training run has the id '{id_}'.", param="id")
        return self.runs[id_]

    def _template(self, id_: str) -> tpb.TrainingTemplate:
        if id_ not in self.templates:
            raise domain.NotFoundError(f"No training template has the id '{id_}'.", param="id")
        return self.templates[id_]

    def _refuse_if_busy(self) -> None:
        for run in self.runs.values():
            if run.state == tpb.TRAINING_STATE_RUNNING:
                raise domain.TrainingBusyError(
                    f"Run '{run.id}' is training; one run trains at a time. Stop it "
                    "(StopTraining) or wait for it to finish."
                )

    def _save_template(self, template: tpb.TrainingTemplate) -> tpb.TrainingTemplate:
        for other in self.templates.values():
            if other.name == template.name and other.id != template.id:
                raise domain.AlreadyExistsError(
                    f"A template named '{template.name}' exists.", param="name"
                )
        self.templates[template.id] = template
        return template

    # ---- runs

    async def StartTraining(self, request, context):
        self.requests.append(request)
        config = tpb.TrainingConfig()
        if request.template_id:
            config.CopyFrom(self._template(request.template_id).config)
        config.MergeFrom(request.config)  # non-zero fields override the template's
        config = with_defaults(config)
        self._refuse_if_busy()
        id_ = self._next_id("run")
        self.runs[id_] = tpb.TrainingRun(
            id=id_,
            name=request.name or f"{HOOK} topk",
            config=config,
            state=tpb.TRAINING_STATE_RUNNING,
            stage="harvesting",
            total_steps=1000,
            model="smollm2-135m",
            created_at_unix_ms=T0,
            updated_at_unix_ms=T0,
        )
        self.metrics[id_] = []
        return tspb.StartTrainingResponse(run=self.runs[id_])

    async def GetTrainingRun(self, request, context):
        self.requests.append(request)
        return tspb.GetTrainingRunResponse(run=self._run(request.id))

    async def ListTrainingRuns(self, request, context):
        self.requests.append(request)
        runs = sorted(self.runs.values(), key=lambda r: r.created_at_unix_ms, reverse=True)
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = runs[start : start + size]
        more = start + size < len(runs)
        return tspb.ListTrainingRunsResponse(
            runs=page, next_page_token=str(start + size) if more else ""
        )

    async def StopTraining(self, request, context):
        self.requests.append(request)
        run = self._run(request.id)
        if run.state == tpb.TRAINING_STATE_RUNNING:
            run.state = tpb.TRAINING_STATE_STOPPING
            run.stage = "stopping at the next step"
        return tspb.StopTrainingResponse(run=run)

    async def ResumeTraining(self, request, context):
        self.requests.append(request)
        run = self._run(request.id)
        if run.state not in (tpb.TRAINING_STATE_STOPPED, tpb.TRAINING_STATE_FAILED):
            raise domain.InvalidArgumentError(
                f"Run '{run.id}' is not stopped; only stopped, failed or interrupted runs resume.",
                param="id",
            )
        self._refuse_if_busy()
        run.state = tpb.TRAINING_STATE_QUEUED
        run.stage = "queued"
        return tspb.ResumeTrainingResponse(run=run)

    async def DeleteTrainingRun(self, request, context):
        self.requests.append(request)
        run = self._run(request.id)
        if run.state == tpb.TRAINING_STATE_RUNNING:
            raise domain.TrainingBusyError(
                f"Run '{run.id}' is training; stop it (StopTraining) and delete it after.",
                param="id",
            )
        del self.runs[run.id]
        return tspb.DeleteTrainingRunResponse(freed_bytes=5 * 2**32)

    async def ListTrainingMetrics(self, request, context):
        self.requests.append(request)
        self._run(request.id)
        after = request.after_step
        kept = [m for m in self.metrics[request.id] if m.step > after]
        return tspb.ListTrainingMetricsResponse(metrics=kept[: request.limit or 1000])

    async def WatchTrainingRun(self, request, context):
        self.requests.append(request)
        self._run(request.id)
        try:
            for i, entry in enumerate(self.watch_script):
                if entry == "hang":
                    await asyncio.Event().wait()
                if isinstance(entry, BaseException):
                    raise entry
                yield tspb.WatchTrainingRunResponse(
                    run=entry, metrics=self.watch_metrics.get(i, [])
                )
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.watch_cancelled.set()
            raise

    # ---- corpora

    async def UploadCorpus(self, request_iterator, context):
        messages = [m async for m in request_iterator]
        self.requests.append(messages)
        if not messages or messages[0].WhichOneof("part") != "name":
            raise domain.InvalidArgumentError("The first message must carry the name.", "name")
        name = messages[0].name
        if not name.endswith((".txt", ".jsonl")):
            raise domain.InvalidArgumentError(
                "The corpus name must end in .txt or .jsonl.", param="name"
            )
        data = b"".join(m.data for m in messages[1:])
        id_ = self._next_id("corpus")
        self.corpus_bytes[id_] = data
        self.corpora[id_] = tpb.Corpus(
            id=id_,
            name=name,
            size_bytes=len(data),
            documents=data.count(b"\n"),
            created_at_unix_ms=T0,
        )
        return tspb.UploadCorpusResponse(corpus=self.corpora[id_])

    async def ListCorpora(self, request, context):
        self.requests.append(request)
        return tspb.ListCorporaResponse(corpora=list(self.corpora.values()))

    async def DeleteCorpus(self, request, context):
        self.requests.append(request)
        if request.id not in self.corpora:
            raise domain.NotFoundError(f"No corpus has the id '{request.id}'.", param="id")
        del self.corpora[request.id]
        return tspb.DeleteCorpusResponse()

    # ---- templates

    async def CreateTrainingTemplate(self, request, context):
        self.requests.append(request)
        template = tpb.TrainingTemplate(
            id=self._next_id("tpl"),
            name=request.name,
            description=request.description,
            config=with_defaults(request.config),
            favourite=request.favourite,
            created_at_unix_ms=T0,
            updated_at_unix_ms=T0,
        )
        return tspb.CreateTrainingTemplateResponse(template=self._save_template(template))

    async def GetTrainingTemplate(self, request, context):
        self.requests.append(request)
        return tspb.GetTrainingTemplateResponse(template=self._template(request.id))

    async def ListTrainingTemplates(self, request, context):
        self.requests.append(request)
        ordered = sorted(self.templates.values(), key=lambda t: (not t.favourite, t.name))
        return tspb.ListTrainingTemplatesResponse(templates=ordered)

    async def UpdateTrainingTemplate(self, request, context):
        self.requests.append(request)
        template = tpb.TrainingTemplate()
        template.CopyFrom(self._template(request.id))
        for name in ("name", "description", "favourite"):
            if request.HasField(name):
                setattr(template, name, getattr(request, name))
        if request.HasField("config"):
            template.config.CopyFrom(with_defaults(request.config))
        template.updated_at_unix_ms = T0 + 1
        return tspb.UpdateTrainingTemplateResponse(template=self._save_template(template))

    async def DeleteTrainingTemplate(self, request, context):
        self.requests.append(request)
        del self.templates[self._template(request.id).id]
        return tspb.DeleteTrainingTemplateResponse()

    async def DuplicateTrainingTemplate(self, request, context):
        self.requests.append(request)
        copy = tpb.TrainingTemplate()
        copy.CopyFrom(self._template(request.id))
        copy.id = self._next_id("tpl")
        copy.name = request.name or f"{copy.name} (copy)"
        copy.favourite = False
        return tspb.DuplicateTrainingTemplateResponse(template=self._save_template(copy))

    async def ExportTrainingTemplate(self, request, context):
        self.requests.append(request)
        return tspb.ExportTrainingTemplateResponse(json=self.export_text(request.id))

    def export_text(self, id_: str) -> str:
        template = self._template(id_)
        document = {
            "schema": TEMPLATE_SCHEMA,
            "name": template.name,
            "description": template.description,
            "favourite": template.favourite,
            "config": json_format.MessageToDict(template.config, preserving_proto_field_name=True),
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    async def ImportTrainingTemplate(self, request, context):
        self.requests.append(request)
        try:
            document = json.loads(request.json)
        except json.JSONDecodeError as exc:
            raise domain.InvalidArgumentError(
                f"The template is not JSON: {exc.msg}.", param="json"
            ) from None
        if not isinstance(document, dict) or document.get("schema") != TEMPLATE_SCHEMA:
            raise domain.InvalidArgumentError(
                f'A training template is a JSON object with "schema": "{TEMPLATE_SCHEMA}".',
                param="json",
            )
        template = tpb.TrainingTemplate(
            id=self._next_id("tpl"),
            name=request.name or document["name"],
            description=document["description"],
            favourite=document["favourite"],
            config=json_format.ParseDict(document["config"], tpb.TrainingConfig()),
            created_at_unix_ms=T0,
            updated_at_unix_ms=T0,
        )
        return tspb.ImportTrainingTemplateResponse(template=self._save_template(template))


@pytest.fixture(scope="module")
async def training_server() -> AsyncIterator[tuple[FakeTraining, str]]:
    servicer = FakeTraining()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    tspb_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def bridge_host(training_server) -> AsyncIterator[str]:
    """One bridge (real uvicorn) for the whole module: starting one per test is slow."""
    _, address = training_server
    async with serve_bridge(address) as host:
        yield host


@pytest.fixture
async def bridge(
    training_server, bridge_host
) -> AsyncIterator[tuple[FakeTraining, httpx.AsyncClient, str]]:
    servicer, _ = training_server
    servicer.reset()
    async with httpx.AsyncClient(base_url=f"http://{bridge_host}/api/v1/training") as http:
        yield servicer, http, bridge_host


TOPK_CONFIG = {
    "corpus": {"corpus_id": "corpus-7"},
    "hook_name": HOOK,
    "architecture": "topk",
    "k": 16,
    "expansion_factor": 4,
    "total_tokens": 2_000_000,
    "learning_rate": 0.0003,
    "seed": 2**63 + 1,
    "hook_name_out": None,  # null: the default, like leaving it out
}


async def start_run(http: httpx.AsyncClient, **body) -> dict:
    response = await http.post("/runs", json={"config": TOPK_CONFIG, **body})
    assert response.status_code == 201, response.text
    return response.json()["run"]


# ---------------------------------------------------------------- JSON <-> protobuf


async def test_start_translates_the_config_both_ways(bridge):
    servicer, http, _ = bridge
    response = await http.post("/runs", json={"name": "l6 topk", "config": TOPK_CONFIG})

    assert response.status_code == 201
    assert response.headers["location"] == "/api/v1/training/runs/run-1"
    (request,) = servicer.requests
    assert request == tspb.StartTrainingRequest(
        name="l6 topk",
        config=tpb.TrainingConfig(
            corpus=tpb.CorpusSource(corpus_id="corpus-7"),
            hook_name=HOOK,
            architecture=tpb.TRAINING_ARCHITECTURE_TOPK,
            k=16,
            expansion_factor=4,
            total_tokens=2_000_000,
            learning_rate=0.0003,
            seed=2**63 + 1,
        ),
    )
    assert request.config.corpus.WhichOneof("source") == "corpus_id"
    run = response.json()["run"]
    assert run == {
        "id": "run-1",
        "name": "l6 topk",
        "config": {
            "corpus": {"corpus_id": "corpus-7"},
            "hook_name": HOOK,
            "hook_name_out": None,
            "skip": False,
            "architecture": "topk",
            "d_sae": 0,
            "expansion_factor": 4,
            "k": 16,
            "l1_coefficient": 0.0,
            "l0_coefficient": 0.0,
            "learning_rate": 0.0003,
            "warmup_steps": 0,
            "decay_steps": 0,
            "batch_size_tokens": 4096,
            "total_tokens": 2_000_000,
            "normalize_activations": None,
            "decoder_norm": None,
            "dead_feature_window": 0,
            "resample_dead": False,
            "checkpoint_every_steps": 0,
            "seed": 2**63 + 1,
            "context_size": 0,
            "prepend_bos": False,
            "keep_first_position": False,
            "text_field": None,
            "eval_fraction": 0.0,
            "cache_activations": False,
            "aux_k_coefficient": 0.0,
            "sparsity_warmup_steps": 0,
            "jumprelu_init_threshold": 0.0,
            "jumprelu_bandwidth": 0.0,
            "harvest_batch_windows": 0,
        },
        "state": "running",
        "stage": "harvesting",
        "step": 0,
        "total_steps": 1000,
        "latest": None,
        "final_eval": None,
        "error": None,
        "sae_id": None,
        "model": "smollm2-135m",
        "checkpoint_step": 0,
        "created_at_unix_ms": T0,
        "updated_at_unix_ms": T0,
    }


async def test_a_minimal_config_leaves_every_other_field_zero(bridge):
    servicer, http, _ = bridge
    config = {"corpus": {"path": "wiki/"}, "hook_name": HOOK}
    run = (await http.post("/runs", json={"config": config})).json()["run"]

    (request,) = servicer.requests
    assert request == tspb.StartTrainingRequest(
        config=tpb.TrainingConfig(corpus=tpb.CorpusSource(path="wiki/"), hook_name=HOOK)
    )
    assert request.config.corpus.WhichOneof("source") == "path"
    assert request.config.architecture == tpb.TRAINING_ARCHITECTURE_UNSPECIFIED
    # The service filled the defaults in; the answer shows them.
    assert run["config"]["corpus"] == {"path": "wiki/"}
    assert (run["config"]["architecture"], run["config"]["k"]) == ("topk", 32)
    assert run["name"] == f"{HOOK} topk"


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "batchtopk"])
async def test_every_architecture_name(bridge, architecture):
    servicer, http, _ = bridge
    config = {"hook_name": HOOK, "architecture": architecture}
    run = (await http.post("/runs", json={"config": config})).json()["run"]
    enum = tpb.TrainingArchitecture.Value(f"TRAINING_ARCHITECTURE_{architecture.upper()}")
    assert servicer.requests[0].config.architecture == enum
    assert run["config"]["architecture"] == architecture


async def test_states_and_metrics_read_as_json(bridge):
    servicer, http, _ = bridge
    run = await start_run(http)
    servicer.runs[run["id"]] = snapshot(
        servicer.runs[run["id"]],
        state=tpb.TRAINING_STATE_FAILED,
        stage="",
        step=2,
        error="The loss is NaN.",
        latest=metrics(2, loss=float("nan")),
    )
    servicer.metrics[run["id"]] = [metrics(1), metrics(2, loss=float("nan"), dead_features=7)]

    got = (await http.get(f"/runs/{run['id']}")).json()["run"]
    listed = await http.get(f"/runs/{run['id']}/metrics", params={"after_step": 1, "limit": 5})

    assert (got["state"], got["stage"], got["error"]) == ("failed", None, "The loss is NaN.")
    assert got["latest"]["loss"] == "NaN"  # not invalid JSON, not a 500
    assert servicer.requests[-1] == tspb.ListTrainingMetricsRequest(
        id=run["id"], after_step=1, limit=5
    )
    assert listed.json() == {
        "data": [
            {
                "step": 2,
                "tokens": 8192,
                "loss": "NaN",
                "mse": 0.5,
                "l0": 32.0,
                "l1": 0.0,
                "fvu": 0.0,
                "dead_features": 7,
                "tokens_per_s": 0.0,
                "learning_rate": 0.0004,
                "time_unix_ms": T0 + 2,
                "eval": False,
            }
        ],
        "next_page_token": None,
    }


async def test_list_pages_stop_resume_and_delete(bridge):
    servicer, http, _ = bridge
    first = await start_run(http, name="first")
    await http.post(f"/runs/{first['id']}/stop")
    servicer.runs[first["id"]].state = tpb.TRAINING_STATE_STOPPED
    second = await start_run(http, name="second")
    servicer.runs[second["id"]].created_at_unix_ms = T0 + 1

    page1 = (await http.get("/runs", params={"page_size": 1})).json()
    page2 = (await http.get("/runs", params={"page_size": 1, "page_token": "1"})).json()
    stopping = await http.post(f"/runs/{second['id']}/stop")
    servicer.runs[second["id"]].state = tpb.TRAINING_STATE_STOPPED
    resumed = await http.post(f"/runs/{first['id']}/resume")
    resumed_over = await http.post(f"/runs/{second['id']}/resume", json={"from_scratch": True})
    servicer.runs[first["id"]].state = tpb.TRAINING_STATE_COMPLETED
    deleted = await http.delete(f"/runs/{first['id']}")

    assert [r["name"] for r in page1["data"]] == ["second"]
    assert page1["next_page_token"] == "1"
    assert [r["name"] for r in page2["data"]] == ["first"]
    assert page2["next_page_token"] is None
    assert stopping.json()["run"]["state"] == "stopping"
    assert resumed.json()["run"]["state"] == "queued"
    assert resumed_over.status_code == 200
    resumes = [r for r in servicer.requests if isinstance(r, tspb.ResumeTrainingRequest)]
    assert resumes == [
        tspb.ResumeTrainingRequest(id=first["id"]),
        tspb.ResumeTrainingRequest(id=second["id"], from_scratch=True),
    ]
    assert deleted.status_code == 200
    assert deleted.json() == {"freed_bytes": 5 * 2**32}


# ---------------------------------------------------------------- bad requests, error passthrough


@pytest.mark.parametrize(
    ("config", "param", "message"),
    [
        (
            {"hook_name": HOOK, "learning_rat": 0.001},
            "config.learning_rat",
            "Extra inputs are not permitted (at `config.learning_rat`)",
        ),
        (
            {"hook_name": HOOK, "corpus": {"corpus_id": "c", "url": "x"}},
            "config.corpus.url",
            "Extra inputs are not permitted (at `config.corpus.url`)",
        ),
        (
            {"hook_name": HOOK, "k": "thirty-two"},
            "config.k",
            "Input should be a valid integer (at `config.k`)",
        ),
        (
            {"hook_name": HOOK, "k": -1},
            "config.k",
            "Input should be greater than or equal to 0 (at `config.k`)",
        ),
        (
            {"hook_name": HOOK, "total_tokens": 1.5},
            "config.total_tokens",
            "Input should be a valid integer (at `config.total_tokens`)",
        ),
        (
            {"hook_name": HOOK, "resample_dead": 1},
            "config.resample_dead",
            "Input should be a valid boolean (at `config.resample_dead`)",
        ),
        (
            {"hook_name": 9},
            "config.hook_name",
            "Input should be a valid string (at `config.hook_name`)",
        ),
        (
            {"hook_name": HOOK, "learning_rate": "fast"},
            "config.learning_rate",
            "Input should be a valid number (at `config.learning_rate`)",
        ),
        (
            {"hook_name": HOOK, "architecture": "TopK"},
            "config.architecture",
            "Input should be 'standard', 'jumprelu', 'topk' or 'batchtopk' "
            "(at `config.architecture`)",
        ),
        (
            {"hook_name": HOOK, "corpus": {"corpus_id": "c", "path": "wiki/"}},
            "config.corpus",
            "Takes `corpus_id` or `path`, not both (at `config.corpus`)",
        ),
        (
            {"hook_name": HOOK, "corpus": "wiki/"},
            "config.corpus",
            "Input should be a valid dictionary or object to extract fields from "
            "(at `config.corpus`)",
        ),
    ],
)
async def test_bad_config_is_400_naming_the_field(bridge, config, param, message):
    servicer, http, _ = bridge
    response = await http.post("/runs", json={"config": config})
    assert response.status_code == 400
    assert response.json() == error(message, "invalid_request_error", param, "invalid_value")
    assert servicer.requests == []


async def test_bad_body_is_400_not_422(bridge):
    servicer, http, _ = bridge
    unknown = await http.post("/runs", json={"config": {"hook_name": HOOK}, "priority": 1})
    not_object = await http.post("/runs", json={"config": [HOOK]})
    in_template = await http.post(
        "/templates", json={"name": "t", "config": {"hook_name": HOOK, "k": "many"}}
    )
    for response, param in ((unknown, "priority"), (not_object, "config"), (in_template, None)):
        assert response.status_code == 400
        body = response.json()["error"]
        assert body["type"] == "invalid_request_error"
        assert body["param"] == (param or "config.k")
    assert servicer.requests == []


async def test_service_errors_pass_through_with_their_param(bridge):
    _, http, _ = bridge
    no_hook = await http.post("/runs", json={"config": {"architecture": "jumprelu"}})
    missing = await http.get("/runs/nope")
    assert no_hook.status_code == 400
    assert no_hook.json() == error(
        "`hook_name` is required.", "invalid_request_error", "config.hook_name", "invalid_value"
    )
    assert missing.status_code == 404
    assert missing.json() == error(
        "No training run has the id 'nope'.", "not_found_error", "id", "not_found"
    )
    for response in (
        await http.post("/runs/nope/stop"),
        await http.post("/runs/nope/resume"),
        await http.delete("/runs/nope"),
        await http.get("/runs/nope/metrics"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "id"


async def test_a_second_run_and_deleting_a_training_run_are_409(bridge):
    servicer, http, _ = bridge
    run = await start_run(http)
    busy = await http.post("/runs", json={"config": TOPK_CONFIG})
    undeletable = await http.delete(f"/runs/{run['id']}")
    assert busy.status_code == 409
    assert busy.headers["x-should-retry"] == "false"
    assert busy.json() == error(
        f"Run '{run['id']}' is training; one run trains at a time. Stop it (StopTraining) or "
        "wait for it to finish.",
        "conflict_error",
        None,
        "training_busy",
    )
    assert undeletable.status_code == 409
    assert undeletable.json() == error(
        f"Run '{run['id']}' is training; stop it (StopTraining) and delete it after.",
        "conflict_error",
        "id",
        "training_busy",
    )
    assert run["id"] in servicer.runs


async def test_query_parameters_are_checked(bridge):
    servicer, http, _ = bridge
    page = await http.get("/runs", params={"page_size": 500})
    limit = await http.get("/runs/run-1/metrics", params={"limit": 20_000})
    after = await http.get("/runs/run-1/metrics", params={"after_step": -1})
    assert [r.json()["error"]["param"] for r in (page, limit, after)] == [
        "page_size",
        "limit",
        "after_step",
    ]
    assert {r.status_code for r in (page, limit, after)} == {400}
    assert servicer.requests == []


# ---------------------------------------------------------------- watching a run


async def test_watch_sends_frames_in_order_and_closes_when_the_run_finishes(bridge):
    servicer, http, host = bridge
    run = servicer.runs[(await start_run(http))["id"]]
    servicer.watch_script = [
        snapshot(run, stage="training", step=1, latest=metrics(1)),
        snapshot(run, stage="evaluating", step=2, latest=metrics(2)),
        snapshot(
            run,
            state=tpb.TRAINING_STATE_COMPLETED,
            stage="done",
            step=2,
            sae_id="sae-trained",
            final_eval=metrics(2, eval=True),
        ),
        "hang",  # never reached: the bridge stops after the final state
    ]
    servicer.watch_metrics = {0: [metrics(1)], 1: [metrics(2)], 2: [metrics(2, eval=True)]}

    async with connect(f"ws://{host}/api/v1/training/runs/{run.id}/watch") as ws:
        frames = await read_until_closed(ws)

    assert ws.close_code == 1000
    assert [f["type"] for f in frames] == ["run", "run", "run"]
    assert [(f["run"]["state"], f["run"]["step"]) for f in frames] == [
        ("running", 1),
        ("running", 2),
        ("completed", 2),
    ]
    assert [[(m["step"], m["eval"]) for m in f["metrics"]] for f in frames] == [
        [(1, False)],
        [(2, False)],
        [(2, True)],
    ]
    assert frames[-1]["run"]["sae_id"] == "sae-trained"
    assert frames[-1]["run"]["final_eval"]["eval"] is True
    assert frames[0]["run"]["final_eval"] is None
    assert frames[0]["run"]["config"]["architecture"] == "topk"


async def test_an_error_mid_watch_is_an_error_frame_then_close(bridge):
    servicer, http, host = bridge
    run = servicer.runs[(await start_run(http))["id"]]
    servicer.watch_script = [
        snapshot(run, step=1),
        domain.NotFoundError(f"Run '{run.id}' was deleted.", param="id"),
    ]
    async with connect(f"ws://{host}/api/v1/training/runs/{run.id}/watch") as ws:
        texts = [await ws.recv(), await ws.recv()]
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert json.loads(texts[0])["run"]["step"] == 1
    assert json.loads(texts[1]) == {
        "type": "error",
        **error(f"Run '{run.id}' was deleted.", "not_found_error", "id", "not_found"),
    }


async def test_watch_of_an_unknown_run_is_an_error_frame(bridge):
    _, _, host = bridge
    async with connect(f"ws://{host}/api/v1/training/runs/nope/watch") as ws:
        text = await ws.recv()
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert json.loads(text)["error"]["message"] == "No training run has the id 'nope'."


async def test_leaving_the_watch_cancels_the_grpc_call(bridge):
    servicer, http, host = bridge
    run = servicer.runs[(await start_run(http))["id"]]
    servicer.watch_script = [run, "hang"]
    async with connect(f"ws://{host}/api/v1/training/runs/{run.id}/watch") as ws:
        assert json.loads(await ws.recv())["run"]["id"] == run.id
    await asyncio.wait_for(servicer.watch_cancelled.wait(), timeout=5)


# ---------------------------------------------------------------- corpora


async def test_upload_streams_the_raw_body_in_1_mib_messages(bridge):
    servicer, http, _ = bridge
    line = b'{"text": "Sparse autoencoders find features in activations."}\n'
    corpus = line * (5 * MiB // len(line) + 1000)  # a little over 5 MiB

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(corpus), 300_000):  # pieces unaligned with 1 MiB
            yield corpus[start : start + 300_000]

    response = await http.post("/corpora", params={"name": "wiki.jsonl"}, content=body())

    assert response.status_code == 201, response.text
    (messages,) = servicer.requests
    assert messages[0] == tspb.UploadCorpusRequest(name="wiki.jsonl")
    sizes = [len(m.data) for m in messages[1:]]
    assert sizes[:-1] == [MiB] * (len(sizes) - 1) and 0 < sizes[-1] <= MiB
    assert servicer.corpus_bytes["corpus-1"] == corpus
    assert response.headers["location"] == "/api/v1/training/corpora/corpus-1"
    assert response.json() == {
        "corpus": {
            "id": "corpus-1",
            "name": "wiki.jsonl",
            "size_bytes": len(corpus),
            "documents": corpus.count(b"\n"),
            "created_at_unix_ms": T0,
        }
    }


async def test_corpora_list_delete_and_upload_errors(bridge):
    servicer, http, _ = bridge
    await http.post("/corpora", params={"name": "a.txt"}, content=b"one\n\ntwo\n")
    listed = (await http.get("/corpora")).json()
    deleted = await http.delete("/corpora/corpus-1")
    missing = await http.delete("/corpora/corpus-1")
    bad_name = await http.post("/corpora", params={"name": "a.csv"}, content=b"x")
    no_name = await http.post("/corpora", content=b"x")
    form = await http.post("/corpora", params={"name": "a.txt"}, files={"file": b"x"})

    assert [c["name"] for c in listed["data"]] == ["a.txt"]
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert missing.status_code == 404
    assert missing.json() == error(
        "No corpus has the id 'corpus-1'.", "not_found_error", "id", "not_found"
    )
    assert bad_name.status_code == 400
    assert bad_name.json()["error"]["param"] == "name"
    assert (no_name.status_code, no_name.json()["error"]["param"]) == (400, "name")
    assert form.status_code == 400
    uploads = [r for r in servicer.requests if isinstance(r, list)]
    assert len(uploads) == 2  # neither the nameless nor the form upload reached the service


# ---------------------------------------------------------------- templates


async def test_template_lifecycle(bridge):
    servicer, http, _ = bridge
    created = await http.post(
        "/templates",
        json={"name": "TopK L6", "description": "Small and fast.", "config": TOPK_CONFIG},
    )
    tpl = created.json()["template"]
    fav = await http.post(
        "/templates", json={"name": "Another", "config": {"hook_name": HOOK}, "favourite": True}
    )
    taken = await http.post("/templates", json={"name": "TopK L6", "config": {"hook_name": HOOK}})
    patched = await http.patch(f"/templates/{tpl['id']}", json={"name": "TopK L6 v2"})
    patched_config = await http.patch(
        f"/templates/{tpl['id']}",
        json={"favourite": True, "config": {"hook_name": HOOK, "architecture": "batchtopk"}},
    )
    copied = await http.post(f"/templates/{tpl['id']}/duplicate")
    named_copy = await http.post(f"/templates/{tpl['id']}/duplicate", json={"name": "Mine"})
    listed = (await http.get("/templates")).json()
    got = await http.get(f"/templates/{tpl['id']}")
    deleted = await http.delete(f"/templates/{named_copy.json()['template']['id']}")
    gone = await http.get(f"/templates/{named_copy.json()['template']['id']}")

    assert created.status_code == 201
    assert created.headers["location"] == f"/api/v1/training/templates/{tpl['id']}"
    assert (tpl["name"], tpl["description"], tpl["favourite"]) == (
        "TopK L6",
        "Small and fast.",
        False,
    )
    assert tpl["config"]["corpus"] == {"corpus_id": "corpus-7"}
    assert fav.json()["template"]["description"] is None
    assert taken.status_code == 409
    assert taken.json()["error"]["type"] == "conflict_error"
    updates = [r for r in servicer.requests if isinstance(r, tspb.UpdateTrainingTemplateRequest)]
    assert updates[0] == tspb.UpdateTrainingTemplateRequest(id=tpl["id"], name="TopK L6 v2")
    assert not updates[0].HasField("config") and not updates[0].HasField("favourite")
    assert updates[1].HasField("favourite") and updates[1].HasField("config")
    assert not updates[1].HasField("name")
    assert patched.json()["template"]["name"] == "TopK L6 v2"
    assert patched_config.json()["template"]["config"]["architecture"] == "batchtopk"
    assert copied.status_code == 201
    assert copied.json()["template"]["name"] == "TopK L6 v2 (copy)"
    assert [t["name"] for t in listed["data"]] == [
        "Another",
        "TopK L6 v2",
        "Mine",
        "TopK L6 v2 (copy)",
    ]
    assert got.json()["template"]["favourite"] is True
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert gone.status_code == 404


async def test_start_from_a_template_with_overrides(bridge):
    servicer, http, _ = bridge
    tpl = (await http.post("/templates", json={"name": "base", "config": TOPK_CONFIG})).json()[
        "template"
    ]
    run = (await http.post("/runs", json={"template_id": tpl["id"], "config": {"k": 64}})).json()[
        "run"
    ]
    start = servicer.requests[-1]
    assert start == tspb.StartTrainingRequest(
        template_id=tpl["id"], config=tpb.TrainingConfig(k=64)
    )
    assert (run["config"]["k"], run["config"]["expansion_factor"]) == (64, 4)


async def test_export_returns_the_document_and_import_takes_it_back(bridge):
    servicer, http, _ = bridge
    tpl = (
        await http.post(
            "/templates", json={"name": "TopK L6", "config": TOPK_CONFIG, "favourite": True}
        )
    ).json()["template"]

    exported = await http.get(f"/templates/{tpl['id']}/export")
    expected = servicer.export_text(tpl["id"])
    imported = await http.post(
        "/templates/import",
        params={"name": "TopK L6 imported"},
        content=exported.content,
        headers={"content-type": "application/json"},
    )
    not_a_template = await http.post("/templates/import", content=b'{"name": "x"}')
    missing = await http.get("/templates/nope/export")

    assert exported.status_code == 200
    assert exported.text == expected  # the service's bytes, untouched
    assert exported.headers["content-type"] == "application/json"
    assert exported.headers["content-disposition"] == 'attachment; filename="TopK_L6.json"'
    assert json.loads(exported.text)["schema"] == TEMPLATE_SCHEMA
    imports = [r for r in servicer.requests if isinstance(r, tspb.ImportTrainingTemplateRequest)]
    assert imports[0] == tspb.ImportTrainingTemplateRequest(json=expected, name="TopK L6 imported")
    assert imported.status_code == 201
    assert imported.json()["template"]["name"] == "TopK L6 imported"
    assert imported.json()["template"]["config"] == tpl["config"]
    assert imported.json()["template"]["favourite"] is True
    assert not_a_template.status_code == 400
    assert not_a_template.json() == error(
        f'A training template is a JSON object with "schema": "{TEMPLATE_SCHEMA}".',
        "invalid_request_error",
        "json",
        "invalid_value",
    )
    assert missing.status_code == 404
    assert missing.json() == error(
        "No training template has the id 'nope'.", "not_found_error", "id", "not_found"
    )
