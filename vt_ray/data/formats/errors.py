"""The error a row converter raises: a short reason label (counted) and the detail (reported)."""

from __future__ import annotations


class RowError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
