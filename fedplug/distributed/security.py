"""The shared token, TLS credentials and message-size limits, from the `distribute` section.

The token comes from `distribute.token` or, when that is empty, from the environment variable
named by `distribute.token_env` (FEDPLUG_TOKEN); it is never logged. Without a token there is no
distributed run: the server refuses to start and the client to connect.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from fedplug.config import ConfigNode
from fedplug.distributed.protocol import MiB
from fedplug.errors import ConfigError

# gRPC itself refuses what is larger still, before fedplug sees it (the size is all it logs then).
HARD_LIMIT_FACTOR = 2


def token(cfg: ConfigNode) -> str:
    d = cfg.distribute
    value = d.token or os.environ.get(d.token_env, "")
    if not value:
        raise ConfigError(f"distributed mode needs a shared token: set the environment variable {d.token_env} "
                          f"(or distribute.token) to the same secret on the server and every client")
    return value


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so the time taken does not reveal how much of a guess was right."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def message_limit(cfg: ConfigNode) -> int:
    """Bytes above which fedplug refuses a message (with a log line)."""
    return int(cfg.distribute.max_message_mb * MiB)


def grpc_options(cfg: ConfigNode) -> list[tuple[str, int]]:
    """Transport limits: a margin above fedplug's own, so oversized messages reach fedplug's refusal."""
    hard = message_limit(cfg) * HARD_LIMIT_FACTOR + MiB
    return [("grpc.max_receive_message_length", hard), ("grpc.max_send_message_length", hard)]


def _read(path: str, key: str) -> bytes:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config key 'distribute.{key}': file not found: {file}")
    return file.read_bytes()


def server_credentials(cfg: ConfigNode):
    """TLS credentials when `tls_cert` and `tls_key` are set; None for plain TCP."""
    import grpc

    d = cfg.distribute
    if bool(d.tls_cert) != bool(d.tls_key):
        raise ConfigError("TLS needs both distribute.tls_cert and distribute.tls_key (or neither)")
    if not d.tls_cert:
        return None
    return grpc.ssl_server_credentials([(_read(d.tls_key, "tls_key"), _read(d.tls_cert, "tls_cert"))])


def client_channel(cfg: ConfigNode):
    """A channel to the server: TLS when `tls_ca` is set (verifying the server's certificate)."""
    import grpc

    d = cfg.distribute
    target = f"{d.server_host}:{d.server_port}"
    options = grpc_options(cfg)
    if not d.tls_ca:
        return grpc.insecure_channel(target, options=options)
    if d.tls_server_name:
        options = options + [("grpc.ssl_target_name_override", d.tls_server_name)]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(_read(d.tls_ca, "tls_ca")), options=options)
