"""An independent gRPC client of the faultline agent: Python's grpcio (the gRPC C core) on the
agent's unix socket, with default channel settings, through stubs that grpcio-tools generates
here from proto/ (nothing of the agent's own code).

Used by tests/tests/python.rs. It speaks a line protocol on stdout/stdin so the Rust test can
check the fault's effect between apply and revert:
    health SERVING            every health check answered SERVING
    services NAME,NAME,...    what server reflection lists
    applied ID STATE          after Faults/Apply (then waits for one line on stdin)
    reverted ID STATE REASON  after Faults/Revert
Any failure raises: a traceback on stderr and a non-zero exit status.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def generate_stubs(proto_root: pathlib.Path, out: pathlib.Path) -> None:
    """Compiles proto/faultline/v1/*.proto into Python modules under `out`."""
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.glob("faultline/v1/*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}/faultline/v1")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}",
         f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if status != 0:
        raise SystemExit(f"grpc_tools.protoc failed with status {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="the agent's unix socket")
    parser.add_argument("--proto", required=True, type=pathlib.Path, help="the repo's proto/ directory")
    parser.add_argument("--port", required=True, type=int, help="the TCP port to block inbound")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="faultline-stubs-") as out:
        generate_stubs(args.proto, pathlib.Path(out))
        sys.path.insert(0, out)
        faults_pb2 = importlib.import_module("faultline.v1.faults_pb2")
        faults_pb2_grpc = importlib.import_module("faultline.v1.faults_pb2_grpc")

        # Default settings on purpose: no authority override, no options.
        with grpc.insecure_channel(f"unix://{args.socket}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ["", "faultline.v1.Faults", "faultline.v1.Agent"]:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                if answer.status != health_pb2.HealthCheckResponse.SERVING:
                    raise SystemExit(f"health of {service!r} is {answer.status}")
            print("health SERVING", flush=True)

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            names = [s.name for s in next(answers).list_services_response.service]
            print("services " + ",".join(sorted(names)), flush=True)

            faults = faults_pb2_grpc.FaultsStub(channel)
            spec = faults_pb2.FaultSpec(
                block=faults_pb2.BlockSpec(
                    direction=faults_pb2.DIRECTION_INGRESS,
                    reject=True,
                    match=faults_pb2.PacketMatch(
                        protocol=faults_pb2.PROTOCOL_TCP,
                        ports=[faults_pb2.PortRange(first=args.port, last=args.port)],
                    ),
                )
            )
            applied = faults.Apply(
                faults_pb2.ApplyRequest(
                    spec=spec,
                    duration=duration_pb2.Duration(seconds=60),
                    labels={"client": "python-grpcio"},
                ),
                timeout=10,
            ).fault
            state = faults_pb2.FaultState.Name(applied.state)
            print(f"applied {applied.id} {state}", flush=True)

            sys.stdin.readline()
            reverted = faults.Revert(faults_pb2.RevertRequest(id=applied.id), timeout=10)
            state = faults_pb2.FaultState.Name(reverted.state)
            print(f"reverted {reverted.id} {state} {reverted.reason}", flush=True)


if __name__ == "__main__":
    main()
