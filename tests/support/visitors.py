"""Browsers seen from aiohttp, for page tests that need no JavaScript: each visitor has its own
cookie jar, follows no redirects, reads the forms of the pages it gets and sends them back as a
browser would (hidden fields such as ``csrf`` included)."""

from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import AsyncIterator, Iterable, Mapping
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDictProxy

from support.accounts import ALL_SCOPES, add_token, add_user


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)   # hidden and filled-in inputs
    inputs: dict[str, str] = field(default_factory=dict)          # name -> type, every input


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag == "input" and self.forms and "name" in a:
            form = self.forms[-1]
            kind = a.get("type", "text").lower()
            form.inputs[a["name"]] = kind
            if kind == "hidden" or (kind == "checkbox" and "checked" in a and "disabled" not in a):
                form.fields.append((a["name"], a.get("value", "on")))


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


@dataclass
class Answer:
    status: int
    text: str
    headers: CIMultiDictProxy

    @property
    def words(self) -> str:
        """The page's text with HTML's escapes undone (``'`` is written ``&#39;``)."""
        return html.unescape(self.text)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


class Visitor:
    """One browser: ``get`` and ``post`` a path, ``csrf`` is the form token of the last page read."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf: str | None = None
        self.last: Answer | None = None

    async def _read(self, response: aiohttp.ClientResponse) -> Answer:
        answer = Answer(response.status, await response.text(), response.headers)
        for form in forms(answer.text):
            token = dict(form.fields).get("csrf")
            if token:
                self.csrf = token
        self.last = answer
        return answer

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        async with self.session.get(self.base_url + path, allow_redirects=False, headers=headers) as response:
            return await self._read(response)

    async def post(self, path: str, fields: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
                   csrf: bool | str = True, headers: Mapping[str, str] | None = None) -> Answer:
        """POST a form; ``csrf`` True sends the token of the last page read, a string sends that,
        False none."""
        data = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        if csrf is True and self.csrf:
            data.append(("csrf", self.csrf))
        elif isinstance(csrf, str):
            data.append(("csrf", csrf))
        async with self.session.post(self.base_url + path, data=data, allow_redirects=False,
                                     headers=headers) as response:
            return await self._read(response)

    async def follow(self, answer: Answer) -> Answer:
        assert answer.status in (302, 303), (answer.status, answer.text[:500])
        return await self.get(urljoin("/", answer.location))

    async def sign_in(self, user: str, secret: str) -> Answer:
        """Sign in through the sign-in page's own form: the text input gets the user's name, the
        password input the token."""
        page = await self.get("/signin")
        form = next(f for f in forms(page.text) if f.method == "post")
        data = list(form.fields)
        for name, kind in form.inputs.items():
            if kind == "password":
                data.append((name, secret))
            elif kind in ("text", "email", "") and name not in dict(form.fields):
                data.append((name, user))
        answer = await self.post(urljoin("/signin", form.action or "/signin"), data, csrf=False)
        assert answer.status == 303, (answer.status, answer.text[:500])
        self.csrf = None  # the sign-in form's; the session's comes with the next page
        return answer

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def visitors(base_url: str) -> AsyncIterator:
    """``async with visitors(wharf.url) as visit: alice = visit()``: closed at the end."""
    opened: list[Visitor] = []

    def visit() -> Visitor:
        opened.append(Visitor(base_url))
        return opened[-1]

    try:
        yield visit
    finally:
        for visitor in opened:
            await visitor.close()


async def signed_in(visit, wharf, user: str, scopes=ALL_SCOPES, admin: bool = False) -> tuple[Visitor, int, str]:
    """A visitor signed in as ``user`` (created when missing) with a new token of ``scopes``:
    (visitor, token id, token secret)."""
    add_user(wharf.database, user, admin=admin)
    token_id, secret = add_token(wharf.database, user, scopes)
    visitor = visit()
    await visitor.sign_in(user, secret)
    return visitor, token_id, secret
