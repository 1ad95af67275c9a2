"""A browser at the HTTP level for the page tests: keeps cookies, sends no Authorization header,
signs in through the sign-in form, and reads the forms' CSRF tokens out of the pages."""

from __future__ import annotations

import re

import aiohttp

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(html: str, action: str | None = None) -> str:
    """The CSRF token of the page's form posting to ``action`` (None: the first form's)."""
    start = 0
    if action is not None:
        start = html.find(f'action="{action}"')
        assert start >= 0, f"no form posting to {action} on the page"
    found = CSRF.search(html, start)
    assert found, "no form with a CSRF token on the page"
    return found.group(1)


class WebClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **kwargs) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base_url + path, allow_redirects=False, **kwargs) as resp:
            return resp.status, await resp.text(), resp

    async def post(self, path: str, data: dict, **kwargs) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(self.base_url + path, data=data, allow_redirects=False, **kwargs) as resp:
            return resp.status, await resp.text(), resp

    async def signin(self, user: str, token: str) -> aiohttp.ClientResponse:
        """Through the form, as a person would; asserts it worked."""
        _, html, _ = await self.get("/signin")
        status, body, resp = await self.post("/signin", {"csrf": csrf_of(html, "/signin"), "user": user, "token": token})
        assert status == 303, (status, body[:500])
        return resp

    async def form(self, page: str, action: str, fields: dict | None = None) -> tuple[int, str, aiohttp.ClientResponse]:
        """POST ``fields`` to ``action`` with the CSRF token of the page at ``page`` (as its form would)."""
        status, html, _ = await self.get(page)
        assert status == 200, (status, html[:500])
        return await self.post(action, {"csrf": csrf_of(html, action), **(fields or {})})

    async def session_csrf(self) -> str:
        """The signed-in session's CSRF token (every page's sign-out form carries it)."""
        _, html, _ = await self.get("/packages")
        return csrf_of(html, "/signout")

    async def post_as_session(self, action: str, fields: dict | None = None) -> tuple[int, str, aiohttp.ClientResponse]:
        """POST to ``action`` with the session's own CSRF token, whether or not a page offers that form."""
        return await self.post(action, {"csrf": await self.session_csrf(), **(fields or {})})

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    async def close(self) -> None:
        await self.session.close()
