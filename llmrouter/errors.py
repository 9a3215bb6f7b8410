"""The router's error taxonomy.

Every failure a client can see is a `RouterError`: it carries the HTTP `status`
sent to the client, a stable machine `code` (also used in events and logs) and
whether the router may fall back to another provider (`retryable`). Each client
format renders these in its own error shape. Anything that is not a RouterError
is a bug: it is logged with its traceback and answered with a 500.
"""

from __future__ import annotations


class RouterError(Exception):
    status = 500
    code = "internal_error"
    retryable = False
    # OpenAI-style error type; Anthropic's types are derived from the status.
    kind = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(RouterError):
    """A configuration problem; carries every problem found, one per line."""

    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ClientError(RouterError):
    status = 400
    code = "invalid_request_error"
    kind = "invalid_request_error"


class BadRequest(ClientError):
    """Malformed JSON, a missing field or a wrong type; `param` names the field."""


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"
    kind = "authentication_error"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"
    kind = "permission_error"


class NotFound(ClientError):
    status = 404
    code = "not_found"
    kind = "not_found_error"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"
    kind = "request_too_large"


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class NoRoute(RouterError):
    """No router rule matched the request's model."""

    status = 404
    code = "model_not_found"
    kind = "invalid_request_error"


class KindNotSupported(ClientError):
    """Routing found only providers whose format has no API for the request's
    kind (an embedding or completion for an Anthropic provider)."""

    code = "unsupported_kind"


class PluginError(RouterError):
    status = 500
    code = "plugin_error"


class UpstreamError(RouterError):
    """A provider failed. Raised only at the I/O edge or by stream decoders."""

    status = 502
    code = "upstream_error"
    kind = "api_error"


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable = True


class UpstreamStatusError(UpstreamError):
    """The provider answered with a non-2xx status, which is passed on."""

    code = "upstream_status_error"

    def __init__(self, message: str, *, status: int, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = status == 429 or status >= 500
        self.kind = {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }.get(status, "invalid_request_error" if status < 500 else "api_error")


class CircuitOpen(UpstreamError):
    """Every provider for the request is skipped: each failed repeatedly and
    its circuit breaker is open (llmrouter/breaker.py)."""

    status = 503
    code = "circuit_open"

    def __init__(self, message: str, *, retry_after: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamProtocolError(UpstreamError):
    """Malformed JSON, SSE or NDJSON from the provider, or a truncated stream."""

    code = "upstream_protocol_error"


class ClientGone(Exception):
    """The client closed its connection; nothing more can be sent to it."""
