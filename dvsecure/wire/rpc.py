"""The gRPC plumbing shared by the enclave and the MPC parties' submission
service: raw-bytes handlers (a malformed request gets a clear status instead of
a deserializer crash), refusals mapped to their status, TLS servers."""
from __future__ import annotations

import sys
import traceback
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from ..errors import DuplicateQueryError, DvsecureError, ServiceRefusal


def parse(cls, raw: bytes, what: str, refusal=ServiceRefusal):
    """A protobuf message from exactly these bytes, or `refusal` naming what was
    malformed (including fields this server does not know)."""
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except DecodeError as e:
        raise refusal(f"malformed {what}: {e}") from None
    if len(UnknownFieldSet(msg)):
        raise refusal(f"malformed {what}: it carries fields this server does not know")
    return msg


def handler(fn, who: str):
    """`fn(raw_request_bytes) -> protobuf reply`, served so that every refusal
    reaches the client with its status and message, and the server keeps serving."""
    def call(raw: bytes, context: grpc.ServicerContext):
        left = context.time_remaining()
        if left is not None and left <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it ran")
        try:
            return fn(raw)
        except ServiceRefusal as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except DuplicateQueryError as e:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        except DvsecureError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(e).__name__}: {e}")
        except Exception as e:   # a bug: say so, log it, keep serving
            traceback.print_exc(file=sys.stderr)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {who}: {type(e).__name__}: {e}")
    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None,
                                               response_serializer=lambda m: m.SerializeToString())


def serve(service: str, methods: dict, who: str, listen: str, cert_pem: bytes, key_pem: bytes,
          max_message: int, workers: int = 8):
    """Start a TLS gRPC server for `service` on `listen` (port 0: any free one);
    returns (server, bound port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_message),
                                  ("grpc.max_send_message_length", max_message)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        service, {name: handler(fn, who) for name, fn in methods.items()})])
    port = server.add_secure_port(listen, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    if port == 0:
        raise ServiceRefusal(f"cannot listen on {listen}", "UNAVAILABLE")
    server.start()
    return server, port
