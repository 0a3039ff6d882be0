"""The inference services the bridge fronts, and which one serves which model.

One service (`MILLM_INFERENCE_ADDRESS`) is the plain case: every request goes to it
and it judges the `model` field itself. Several (`MILLM_INFERENCE_ADDRESSES`, one
per served model) are told apart by the model each reports in `GetServerInfo`; the
bridge asks all of them (a survey), trusts the answer for `model_refresh_s`, and
asks again at once when a request names a model it does not know, so a service
that loaded another model is found again without a restart. Replicas of one model
are one entry, a multi-address target whose generations gRPC's `round_robin` spreads
over the healthy replicas (`grpc_calls.REPLICAS_SERVICE_CONFIG`); the bridge never
balances by itself. The management API's calls to such an entry go over a second
channel with gRPC's default `pick_first`, so they all reach one replica: an operation,
a training run or an attachment lives in one replica's memory, and its watch, stop or
detach must find it there. docs/scale-out.md describes the whole path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.config import BridgeSettings
from openai_bridge.errors import InferenceError, invalid_request
from openai_bridge.grpc_calls import REPLICAS_SERVICE_CONFIG, ServiceCalls
from openai_bridge.inference_client import InferenceClient

log = logging.getLogger(__name__)

# The management API's choice of service: its 0-based position in
# MILLM_INFERENCE_ADDRESSES, or the id of the model it serves. Absent: the first.
SERVICE_HEADER = "X-Millm-Service"
# A survey must not wait the full request deadline on one hung service.
SURVEY_TIMEOUT_S = 2.0
# A model id nobody serves asks the services again, but not more often than this.
MISS_REFRESH_S = 1.0


@dataclass(frozen=True)
class Surveyed:
    """One service as its last `GetServerInfo` described it (None: it did not answer)."""

    client: InferenceClient
    info: pb.GetServerInfoResponse | None

    @property
    def model(self) -> pb.ModelInfo | None:
        """The model it serves, once that model is ready."""
        info = self.info
        if info is None or info.model_state != pb.MODEL_STATE_READY or not info.HasField("model"):
            return None
        return info.model


class Services:
    """Every configured inference service, the default (first) one included."""

    def __init__(
        self,
        clients: Sequence[InferenceClient],
        *,
        management: Sequence[ServiceCalls] | None = None,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not clients:
            raise ValueError("at least one inference service is needed")
        self.clients = tuple(clients)
        # The management API's calls to each service (by default the clients' own).
        self.management = tuple(management or (c.calls for c in clients))
        if len(self.management) != len(self.clients):
            raise ValueError("one management channel per inference service")
        self.refresh_s = refresh_s
        self._clock = clock
        self._surveyed: list[Surveyed] = []
        self._surveyed_at: float | None = None

    @classmethod
    def connect(cls, settings: BridgeSettings) -> Services:
        """A channel per configured target; a target of several replicas gets two:
        a balanced one for the OpenAI routes and a `pick_first` one for management.
        Each is made on first use."""
        clients, management = [], []
        for address in settings.service_addresses:
            calls = ServiceCalls(
                address, api_key=settings.api_key, timeout_s=settings.request_timeout_s
            )
            management.append(calls)
            if "," in address:  # several addresses: replicas (config.py checks the form)
                calls = ServiceCalls(
                    address,
                    api_key=settings.api_key,
                    timeout_s=settings.request_timeout_s,
                    service_config=REPLICAS_SERVICE_CONFIG,
                )
            clients.append(InferenceClient(calls))
        return cls(clients, management=management, refresh_s=settings.model_refresh_s)

    @property
    def default(self) -> InferenceClient:
        return self.clients[0]

    @property
    def several(self) -> bool:
        return len(self.clients) > 1

    async def survey(self, *, max_age_s: float) -> list[Surveyed]:
        """What every service serves, asked again when the last answers are older than
        `max_age_s`. A service that fails is listed without a model; when all fail,
        the first failure is raised (an unreachable service stays a 503, not a 404).
        Concurrent surveys are not merged: each is one cheap call per service."""
        now = self._clock()
        if self._surveyed_at is not None and now - self._surveyed_at < max_age_s:
            return self._surveyed
        answers = await asyncio.gather(
            *(self._server_info(i) for i in range(len(self.clients))), return_exceptions=True
        )
        errors = [a for a in answers if isinstance(a, BaseException)]
        for error in errors:
            if not isinstance(error, InferenceError):
                raise error
        if len(errors) == len(answers):
            raise errors[0]
        surveyed = [
            Surveyed(client, None if isinstance(answer, BaseException) else answer)
            for client, answer in zip(self.clients, answers, strict=True)
        ]
        for entry in surveyed:
            if entry.info is None:
                log.warning(
                    "inference service %s did not answer; routing around it",
                    entry.client.calls.address,
                )
        self._surveyed, self._surveyed_at = surveyed, self._clock()
        return surveyed

    async def _server_info(self, index: int) -> pb.GetServerInfoResponse:
        client, management = self.clients[index], self.management[index]
        try:
            return await client.server_info(timeout_s=self._survey_timeout_s(client.calls))
        except InferenceError as error:
            # No replica is healthy (all loading, say): one of them still says why.
            if error.grpc_code != grpc.StatusCode.UNAVAILABLE or management is client.calls:
                raise
        request = pb.GetServerInfoRequest()
        return await management.unary(
            management.stubs.inference.GetServerInfo,
            request,
            timeout_s=self._survey_timeout_s(management),
        )

    @staticmethod
    def _survey_timeout_s(calls: ServiceCalls) -> float:
        return min(SURVEY_TIMEOUT_S, calls.timeout_s)

    async def choose(self, key: str) -> ServiceCalls:
        """The management calls of the service an `X-Millm-Service` value names: its
        position or the id of the model it serves."""
        key = key.strip()
        if key.isdigit():
            if int(key) < len(self.clients):
                return self.management[int(key)]
            raise invalid_request(
                f"`{SERVICE_HEADER}: {key}` is out of range: the bridge fronts "
                f"{len(self.clients)} inference services, numbered from 0.",
                SERVICE_HEADER,
            )
        for max_age_s in (self.refresh_s, MISS_REFRESH_S):
            for index, entry in enumerate(await self.survey(max_age_s=max_age_s)):
                if entry.model is not None and entry.model.id == key:
                    return self.management[index]
        raise not_served(key, self._surveyed, param=SERVICE_HEADER)

    async def close(self) -> None:
        for client, management in zip(self.clients, self.management, strict=True):
            await client.calls.close()
            await management.close()  # a no-op when it is the same channel


def not_served(
    model: str, surveyed: Sequence[Surveyed], param: str | None = "model"
) -> InferenceError:
    """No service serves `model`: 503 (retry) while some service is still loading a
    model, which may be that one, else the OpenAI 404 `model_not_found`."""
    loading = [
        s.info
        for s in surveyed
        if s.info is not None and s.info.model_state == pb.MODEL_STATE_LOADING
    ]
    if loading:
        return InferenceError(
            grpc.StatusCode.UNAVAILABLE,
            "MODEL_LOADING",
            f"No inference service serves `{model}` yet; {len(loading)} of them are loading "
            "a model. Retry shortly.",
            retry_after_s=max(info.retry_after_s for info in loading) or None,
        )
    served = sorted({s.model.id for s in surveyed if s.model is not None})
    listing = ", ".join(f"`{m}`" for m in served) if served else "none"
    return InferenceError(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        f"The model `{model}` does not exist or is not being served; served here: {listing}.",
        param=param,
    )
