"""The connection to a faultline agent, as the `faultline` CLI makes it.

Where: the configuration key `faultline_agent`, else the FAULTLINE_AGENT environment variable,
else the agent's default socket. A path or `unix:PATH` is the agent's unix socket; an
`https://HOST:PORT` address is its remote listener, mutual TLS only, with the client
certificate, its key and the CA named by `faultline_tls_cert`, `faultline_tls_key` and
`faultline_ca` (in the activity's secrets, else its configuration, else FAULTLINE_TLS_CERT,
FAULTLINE_TLS_KEY and FAULTLINE_CA). gRPC errors become Chaos Toolkit's ActivityFailed, with the
agent's status code and message. Nothing here keeps state between activities.
"""

import contextlib
import logging
import os
import pathlib
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import grpc
from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration, Secrets
from google.protobuf import json_format

from chaosfaultline.proto import agent_pb2, agent_pb2_grpc

__all__ = ["Agent", "AgentAddress", "agent_address", "describe_agent", "rpc"]

DEFAULT_SOCKET = "/run/faultline/faultline.sock"
# How long one call may take; applying a fault journals it and changes the kernel first.
CALL_TIMEOUT_SECONDS = 30.0

logger = logging.getLogger("chaostoolkit")


@dataclass(frozen=True)
class TlsFiles:
    """The client side of the agent's mutual TLS, as PEM files."""

    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path


@dataclass(frozen=True)
class AgentAddress:
    """How to reach one agent: a gRPC target, and the TLS files for a remote listener."""

    # As written by the user, for messages.
    shown: str
    # What grpc connects to: `unix:/path` or `HOST:PORT`.
    target: str
    # PEM paths (client certificate, its key, CA) for an https:// address; None on a socket.
    tls: Optional[TlsFiles] = None

    def channel(self) -> grpc.Channel:
        """A new channel to the agent (the caller closes it)."""
        if self.tls is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca.read_bytes(),
            private_key=self.tls.key.read_bytes(),
            certificate_chain=self.tls.cert.read_bytes(),
        )
        return grpc.secure_channel(self.target, credentials)


def _setting(name: str, configuration: Configuration, secrets: Secrets) -> Optional[str]:
    """`name` from the secrets, else the configuration, else the environment (upper case)."""
    for source in (secrets or {}, configuration or {}):
        value = source.get(name)
        if value:
            return str(value)
    return os.environ.get(name.upper()) or None


def agent_address(configuration: Configuration = None, secrets: Secrets = None) -> AgentAddress:
    """The agent this activity talks to (see the module's documentation)."""
    shown = (configuration or {}).get("faultline_agent") or os.environ.get(
        "FAULTLINE_AGENT", DEFAULT_SOCKET
    )
    shown = str(shown)
    if shown.startswith("https://"):
        url = urllib.parse.urlsplit(shown)
        if not url.hostname or not url.port or url.path not in ("", "/"):
            raise ActivityFailed(f"faultline_agent {shown!r}: expected https://HOST:PORT")
        files = {
            name: _setting(f"faultline_{name}", configuration, secrets)
            for name in ("tls_cert", "tls_key", "ca")
        }
        missing = [f"faultline_{name}" for name, path in files.items() if path is None]
        if missing:
            raise ActivityFailed(
                f"faultline_agent {shown!r} is reached over mutual TLS and needs "
                f"{', '.join(missing)} (secrets, configuration or environment)"
            )
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        tls = TlsFiles(*(pathlib.Path(files[n]) for n in ("tls_cert", "tls_key", "ca")))
        return AgentAddress(shown, f"{host}:{url.port}", tls)
    if shown.startswith(("http://", "dns:", "ipv4:", "ipv6:")):
        raise ActivityFailed(
            f"faultline_agent {shown!r}: the agent serves a unix socket (a path or unix:PATH) "
            "and a mutual-TLS listener (https://HOST:PORT), nothing else"
        )
    path = shown[len("unix:"):] if shown.startswith("unix:") else shown
    if path.startswith("//"):
        path = path[2:]
    return AgentAddress(shown, f"unix:{path}")


@contextlib.contextmanager
def rpc(what: str, address: AgentAddress) -> Iterator[None]:
    """Turns a gRPC error raised inside into ActivityFailed naming `what` and the agent."""
    try:
        yield
    except grpc.RpcError as error:
        code = error.code().name if error.code() is not None else "UNKNOWN"
        raise ActivityFailed(
            f"{what} on the faultline agent at {address.shown}: {code}: {error.details()}"
        ) from None


class Agent:
    """One activity's connection to the agent; use it as a context manager."""

    def __init__(self, configuration: Configuration = None, secrets: Secrets = None) -> None:
        self.address = agent_address(configuration, secrets)
        self._channel = self.address.channel()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *_: Any) -> None:
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        """The open channel, for the generated stubs."""
        return self._channel


def describe_agent() -> Optional[Dict[str, Any]]:
    """What the agent named by FAULTLINE_AGENT (or on the default socket) says about itself
    (Agent/Info: version, host, kernel capabilities), or None when it cannot be reached."""
    try:
        with Agent() as agent, rpc("Agent/Info", agent.address):
            info = agent_pb2_grpc.AgentStub(agent.channel).Info(
                agent_pb2.InfoRequest(), timeout=CALL_TIMEOUT_SECONDS
            )
    except ActivityFailed as error:
        logger.warning(f"No faultline agent to describe: {error}")
        return None
    return json_format.MessageToDict(info, preserving_proto_field_name=True)
