"""What a page answers instead of itself: ``PageError(status, message)``, raised by handlers (and by
``posted_form``) and written as the HTML error page (``error.html``) by the pages' middleware."""

from __future__ import annotations


class PageError(Exception):
    """The page cannot be shown: its status (403, 404, 405, 409, 422, 429, 503), a sentence for the
    reader, and headers (``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})
