"""Layer 1: run a command on a site and move bytes. Nothing here knows about schedulers."""

from batchsite.transport.base import (
    AsyncTransport,
    HostKeyError,
    RemoteCommandError,
    Transport,
    TransportError,
    render_command_line,
)

__all__ = [
    "AsyncTransport",
    "HostKeyError",
    "RemoteCommandError",
    "Transport",
    "TransportError",
    "render_command_line",
]
