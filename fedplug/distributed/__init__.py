"""Distributed mode: the server and the clients as separate processes over gRPC (docs/distributed.md).

protocol.py (messages, tensor payloads, checks), security.py (token, TLS, size limits),
service.py (the gRPC service), server.py, client.py, launch.py, commands.py (the CLI).
Imported only by `fedplug server|client|launch`: a standalone run never loads grpc.
"""
