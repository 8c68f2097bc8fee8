"""Experiment arguments to the API's messages and back.

Arguments carry the gRPC API's field names (`proto/faultline/v1/faults.proto`); what JSON cannot
say directly is written the way experiments write it: durations in seconds, enums by their short
lower-case name (`"ingress"`, `"tcp"`, `"normal"`) or their full name (`"DIRECTION_INGRESS"`),
ports as numbers, `"FIRST-LAST"` strings or `{"first": F, "last": L}`. The messages themselves are
built by protobuf's JSON parser, so an unknown field or a wrong type is refused with its name
before any agent is called.
"""

from typing import Any, Dict, Optional, Union

from chaoslib.exceptions import ActivityFailed
from google.protobuf import duration_pb2, json_format

from chaosfaultline.proto import faults_pb2

__all__ = [
    "duration",
    "enum",
    "fault_json",
    "fault_spec",
    "packet_match",
    "seconds",
    "state_name",
]


def enum(prefix: str, value: str) -> str:
    """`value` as the full name of an enum whose names start with `prefix` ("tcp" ->
    "PROTOCOL_TCP"); empty stays empty (the enum's default)."""
    if not value:
        return ""
    upper = value.upper()
    return upper if upper.startswith(prefix + "_") else f"{prefix}_{upper}"


def seconds(value: float) -> str:
    """A duration in seconds in protobuf's JSON form ("1.5s")."""
    return f"{value:.9f}s"


def duration(value: float) -> duration_pb2.Duration:
    """A protobuf Duration of `value` seconds."""
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message


def _port_range(port: Union[int, str, Dict[str, int]]) -> Dict[str, int]:
    if isinstance(port, dict):
        return port
    if isinstance(port, str) and "-" in port:
        first, last = port.split("-", 1)
        return {"first": int(first), "last": int(last)}
    return {"first": int(port), "last": int(port)}


def packet_match(match: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A PacketMatch in JSON form from `{"protocol": "tcp", "ports": [5432], "cidrs": [...]}`."""
    if not match:
        return {}
    out = dict(match)
    if "protocol" in out:
        out["protocol"] = enum("PROTOCOL", str(out["protocol"]))
    if "ports" in out:
        out["ports"] = [_port_range(p) for p in out["ports"]]
    return out


def fault_spec(kind: str, fields: Dict[str, Any]) -> faults_pb2.FaultSpec:
    """A FaultSpec of `kind` ("block", "loss", ...) from fields in JSON form; unset (None, empty)
    fields are left out so the API's defaults apply."""
    fields = {k: v for k, v in fields.items() if v is not None and v != "" and v != {}}
    try:
        return json_format.ParseDict({kind: fields}, faults_pb2.FaultSpec())
    except json_format.ParseError as error:
        raise ActivityFailed(f"{kind} fault: {error}") from None


def state_name(state: int) -> str:
    """A FaultState as the CLI shows it: "active", "reverted", ..."""
    return faults_pb2.FaultState.Name(state).removeprefix("FAULT_STATE_").lower()


def fault_json(fault: faults_pb2.Fault) -> Dict[str, Any]:
    """A Fault as a JSON object with the API's field names; `state` as the CLI shows it."""
    out = json_format.MessageToDict(fault, preserving_proto_field_name=True)
    out["state"] = state_name(fault.state)
    return out
