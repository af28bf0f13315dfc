"""Client-side load balancing: ``--server A,B`` spreads consecutive calls over both replicas."""

from __future__ import annotations

import re
import time

import pytest

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import SAMPLES_DIR
from common.wire.channels import channel, grpc_target

IMAGE = SAMPLES_DIR / "images" / "sample2.png"
# The servicer's per-call log line for a successful AnswerFromImage ("AnswerFromImage OK ...";
# older servers logged "answered ...").
ANSWERED = re.compile(r"\bAnswerFromImage OK\b|\banswered\b")


def test_server_list_becomes_a_multi_address_target():
    assert grpc_target("127.0.0.1:5") == "127.0.0.1:5"
    assert grpc_target("dns:///cloud.internal:50051") == "dns:///cloud.internal:50051"
    assert grpc_target("127.0.0.1:5, 127.0.0.2:6") == "ipv4:127.0.0.1:5,127.0.0.2:6"
    assert grpc_target("[::1]:5,::1:6") == "ipv6:[::1]:5,[::1]:6"
    assert grpc_target("ipv4:127.0.0.1:5,127.0.0.1:6") == "ipv4:127.0.0.1:5,127.0.0.1:6"
    with pytest.raises(ValueError, match="dns:///"):
        grpc_target("cloud-a:5,cloud-b:6")  # names: one dns:/// target instead
    with pytest.raises(ValueError, match="one family"):
        grpc_target("127.0.0.1:5,[::1]:6")
    with pytest.raises(ValueError, match="HOST:PORT"):
        grpc_target("127.0.0.1,127.0.0.2:6")


@pytest.fixture(scope="module")
def replicas(request):
    """Two replicas of one model: the session's shared server and a second one."""
    with ServerProcess() as second:
        # Asked for only now, so that a first start of the shared server loads its model
        # while the second one loads its own.
        first = request.getfixturevalue("default_server")
        second.wait_ready()
        yield [first, second]


def answered(server: ServerProcess) -> int:
    return sum(1 for line in server.stderr_lines if ANSWERED.search(line))


@pytest.mark.integration
def test_consecutive_requests_spread_over_replicas(replicas):
    a, b = replicas
    before = [answered(a), answered(b)]
    stub = pb_grpc.InferenceServiceStub(channel(f"{a.address},{b.address}"))
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60, wait_for_ready=True)
    request = pb.AnswerFromImageRequest(image=jpeg_baseline(open_image(IMAGE), info.image_size, 90),
                                        question="how many objects are there?")
    answers = [list(stub.AnswerFromImage(request, timeout=120))[-1].summary.answer
               for _ in range(6)]
    assert len(set(answers)) == 1 and answers[0].strip()  # replicas of one model agree
    deadline = time.monotonic() + 10  # the log lines arrive through the stderr reader threads
    while True:
        counts = [answered(a) - before[0], answered(b) - before[1]]
        if sum(counts) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(counts) == 6, (counts, a.log()[-2000:], b.log()[-2000:])
    # round_robin over two READY replicas alternates; the first call may land before the
    # second connection is up, so allow an uneven split but not a one-sided one.
    assert min(counts) >= 2, counts


@pytest.mark.integration
def test_a_down_replica_is_skipped(replicas):
    """A listed address that refuses connections does not fail calls: round_robin only
    picks READY replicas."""
    a, _ = replicas
    dead = "127.0.0.1:1"  # nothing listens on port 1 (privileged; our servers use port 0)
    stub = pb_grpc.InferenceServiceStub(channel(f"{dead},{a.address}"))
    for _ in range(3):
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60, wait_for_ready=True)
        assert info.model_id
