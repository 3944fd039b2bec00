"""The demo upstream's request errors, raised by request validation and sent in OpenAI's shape."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A 4xx answer: ``{"error": {message, type, param, code}}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def invalid_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{param}': expected {expected}, but got "
                         f"{type(value).__name__}.", param, "invalid_type")


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param,
                    "missing_required_parameter")
