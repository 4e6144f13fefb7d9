"""The one error a curation request ends with, shared by every endpoint kind (HTTP and ``vllm_local``)."""

from __future__ import annotations


class EndpointError(RuntimeError):
    """A request failed for good (after retries, or a non-retryable status). Never contains the API key.
    ``attempts``/``rate_limited``: HTTP attempts made and 429s among them, for the cost report."""

    def __init__(self, message: str, attempts: int = 0, rate_limited: int = 0) -> None:
        super().__init__(message)
        self.attempts, self.rate_limited = attempts, rate_limited
