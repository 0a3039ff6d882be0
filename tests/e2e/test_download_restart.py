"""A download cut short by killing the inference service resumes after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from millm.v1 import model_service_pb2 as pb
from millm.v1 import model_service_pb2_grpc as pb_grpc
from millm.v1 import operation_pb2
from millm.v1 import operations_service_pb2 as opb
from millm.v1 import operations_service_pb2_grpc as opb_grpc
from tests.conftest import REPO_ROOT, free_port
from tests.fixtures.local_hub import LocalHub

pytestmark = pytest.mark.e2e

WEIGHTS = os.urandom(400_000)


def _start_service(env: dict[str, str], port: int) -> tuple[subprocess.Popen, grpc.Channel]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_service"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return proc, channel
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the inference service did not start")


def test_killed_service_resumes_the_download_after_restart(data_dir, tmp_path):
    converted = next((data_dir / "models" / "converted").glob("*/config.json")).parent
    port = free_port()
    with LocalHub() as hub:
        hub.add_repo("acme/restart", {"config.json": b"{}", "model.safetensors": WEIGHTS})
        hub.slow("model.safetensors", 40_000)
        env = {
            **os.environ,
            "MILLM_DATA_DIR": str(tmp_path),
            "MILLM_GRPC_PORT": str(port),
            "MILLM_HF_ENDPOINT": hub.url,
            # A local folder loads in about a second; the GGUF conversion is not under test.
            "MILLM_MODEL": str(converted),
        }
        proc, channel = _start_service(env, port)
        started = pb_grpc.ModelServiceStub(channel).DownloadModel(
            pb.DownloadModelRequest(repo_id="acme/restart")
        )
        operations = opb_grpc.OperationsServiceStub(channel)
        for snapshot in operations.WatchOperation(
            opb.WatchOperationRequest(id=started.operation.id)
        ):
            if snapshot.operation.bytes_done > 100_000:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        channel.close()

        hub.reset_faults()
        proc, channel = _start_service(env, port)
        try:
            operations = opb_grpc.OperationsServiceStub(channel)
            interrupted = operations.GetOperation(
                opb.GetOperationRequest(id=started.operation.id)
            ).operation
            assert interrupted.state == operation_pb2.OPERATION_STATE_FAILED
            assert "restart" in interrupted.error_message
            hub.clear_requests()

            again = pb_grpc.ModelServiceStub(channel).DownloadModel(
                pb.DownloadModelRequest(repo_id="acme/restart")
            )
            snapshots = [
                s.operation
                for s in operations.WatchOperation(opb.WatchOperationRequest(id=again.operation.id))
            ]
            assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
            resumed = [r for r in hub.requests if r.filename == "model.safetensors"]
            assert len(resumed) == 1 and resumed[0].range is not None
            # Only what was missing crossed the wire again.
            offset = int(resumed[0].range.removeprefix("bytes=").rstrip("-"))
            # The killed service had reported more than 100 kB; whole 64 KiB chunks were on disk.
            assert 65_536 <= offset < len(WEIGHTS)
            assert resumed[0].bytes_sent == len(WEIGHTS) - offset
            model = (
                pb_grpc.ModelServiceStub(channel)
                .GetModel(pb.GetModelRequest(id="acme/restart@main"))
                .model
            )
            assert model.state == pb.CACHED_MODEL_STATE_READY
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            channel.close()
