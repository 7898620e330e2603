"""A Quartermaster client in Python, from stubs that grpcio-tools generates.

    python -m grpc_tools.protoc -I client/api/proto \
        --python_out=STUBS --grpc_python_out=STUBS quartermaster.proto
    PYTHONPATH=STUBS python quartermaster_client.py 127.0.0.1:7102,127.0.0.1:7101,127.0.0.1:7103

What a client in any language does (README, "Using the API from other
languages"):
  * make a request_id once per request (a random UUID) and resend it
    unchanged on every retry: the cluster answers a retry with the first
    attempt's record instead of allocating twice;
  * on UNAVAILABLE, follow `x-qm-leader-addr` when it is there, else wait a
    little and try another replica;
  * on INVALID_ARGUMENT, `x-qm-field` names the bad field.

Prints one JSON object per step (the repository's test reads them).
"""

import json
import sys
import time
import uuid

import grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import quartermaster_pb2 as qm
import quartermaster_pb2_grpc as qm_grpc

CALL_TIMEOUT_S = 5
ATTEMPTS_MAX = 40
NO_LEADER_WAIT_S = 0.25


class Cluster:
    """Calls the leader, wherever it is."""

    def __init__(self, endpoints):
        self.endpoints = list(endpoints)
        self.current = self.endpoints[0]
        self.channels = {}
        self.redirects = []

    def stub(self, address):
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address)
        return qm_grpc.QuartermasterStub(self.channels[address])

    def call(self, method, request):
        for attempt in range(ATTEMPTS_MAX):
            try:
                return getattr(self.stub(self.current), method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                metadata = dict(error.trailing_metadata() or ())
                leader = metadata.get("x-qm-leader-addr")
                if leader:
                    # Not the leader: nothing happened; send it there.
                    self.redirects.append({"from": self.current, "to": leader})
                    self.current = leader
                else:
                    # No leader known (an election), a replica that is down,
                    # or an outcome unknown: the same call again, elsewhere.
                    time.sleep(NO_LEADER_WAIT_S)
                    self.current = self.endpoints[(attempt + 1) % len(self.endpoints)]
        raise RuntimeError(f"{method}: no leader answered after {ATTEMPTS_MAX} attempts")


def services_v1alpha(channel):
    """The services, through grpcio-reflection's client (v1alpha)."""
    database = ProtoReflectionDescriptorDatabase(channel)
    return sorted(database.get_services())


def services_v1(channel):
    """The services, through reflection v1 (its messages are v1alpha's, byte for byte)."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=CALL_TIMEOUT_S)
    return sorted(service.name for reply in replies for service in reply.list_services_response.service)


def record(reply):
    return {
        "request_id": reply.request_id,
        "status": qm.AllocationStatus.Name(reply.status),
        "state": qm.RequestState.Name(reply.state),
        "allocation_id": reply.allocation_id,
        "provider_id": reply.provider_id,
        "reason": reply.reason,
        "grants": [(grant.resource_id, grant.amount) for grant in reply.grants],
    }


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def main():
    cluster = Cluster(sys.argv[1].split(","))
    first = cluster.channels.setdefault(cluster.current, grpc.insecure_channel(cluster.current))
    say("reflection", v1alpha=services_v1alpha(first), v1=services_v1(first))

    provider = qm.RegisterProviderRequest(
        provider_id="py_node",
        labels={"zone": "a"},
        resources=[qm.ResourceSpec(resource_id=f"cpu_{n}", kind="cpu_cores", capacity=1) for n in range(4)]
        + [qm.ResourceSpec(resource_id="mem", kind="memory_gb", capacity=16)],
    )
    registered = cluster.call("RegisterProvider", provider)
    say("registered", status=registered.status, resources=registered.resources, redirects=cluster.redirects)

    request = qm.ResourceRequest(
        request_id=str(uuid.uuid4()),
        requester_id="agent_py",
        resource_requirements={"cpu_cores": 2, "memory_gb": 4},
        priority=1,
        deadline="2099-03-21T12:00:00Z",
    )
    allocated = cluster.call("Allocate", qm.AllocateRequest(request=request))
    say("allocated", **record(allocated))
    # A retry (an answer lost, say) with the same request_id: the same record.
    again = cluster.call("Allocate", qm.AllocateRequest(request=request))
    say("retried", **record(again))

    bad = qm.ResourceRequest()
    bad.CopyFrom(request)
    bad.request_id = str(uuid.uuid4())
    bad.resource_requirements["cpu_cores"] = -2
    try:
        cluster.call("Allocate", qm.AllocateRequest(request=bad))
        say("bad_input", code="OK")
    except grpc.RpcError as error:
        metadata = dict(error.trailing_metadata() or ())
        say("bad_input", code=error.code().name, field=metadata.get("x-qm-field"), message=error.details())

    released = cluster.call("Release", qm.ReleaseRequest(id=allocated.allocation_id))
    say("released", **record(released))

    heartbeat = cluster.call("Heartbeat", qm.HeartbeatRequest(provider_id="nobody"))
    # proto3 leaves a false bool out of the message: read the field itself.
    say("unknown_heartbeat", known=heartbeat.known)


if __name__ == "__main__":
    main()
