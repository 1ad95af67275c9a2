"""The pages in headless Chromium (Debian's, through Playwright), as a person uses them: sign in,
browse and search, copy the pull command, delete and restore a version, change visibility; and
the pages read without JavaScript. ``WHARF_SCREENSHOTS=1`` writes docs/screenshots/{signin,packages,package}.png."""

from __future__ import annotations

import pytest

import uuid

import aiohttp

from support.accounts import add_token, add_user, basic
from support.browser import screenshot
from support.images import MANIFEST_ACCEPT, make_image, make_index, push_image

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


async def _pull_status(wharf, repository: str, reference: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{wharf.url}/v2/{repository}/manifests/{reference}",
                               headers={"Accept": MANIFEST_ACCEPT}) as resp:
            return resp.status


async def _site(make_wharf):
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    _, secret = add_token(wharf.database, "alice")
    suffix = uuid.uuid4().hex[:4]
    app, tool, notes = f"alice/webshop-{suffix}", f"alice/tools/builder-{suffix}", f"alice/notes-{suffix}"
    labels = {"org.opencontainers.image.source": "https://git.example.com/alice/webshop",
              "org.opencontainers.image.description": "The shop's web front end: static files served by nginx",
              "org.opencontainers.image.licenses": "Apache-2.0"}
    await push_image(wharf.url, app, make_image(app + "-1", labels=labels), "1.0", auth=("alice", secret))
    await push_image(wharf.url, app, make_index(app), "latest", auth=("alice", secret))
    await push_image(wharf.url, tool, make_image(tool, labels={
        "org.opencontainers.image.description": "Builds the images of the other packages"}), "v2",
        auth=("alice", secret))
    await push_image(wharf.url, notes, make_image(notes), "v1", auth=("alice", secret))
    async with aiohttp.ClientSession() as session:
        for repository in (app, tool):
            name = repository.split("/", 1)[1].replace("/", "%2F")
            async with session.patch(f"{wharf.url}/api/users/alice/packages/container/{name}",
                                     json={"visibility": "public"},
                                     headers={"Authorization": basic("alice", secret)}) as resp:
                assert resp.status == 200
    return wharf, secret, app, tool, notes


async def _sign_in(page, wharf, secret: str) -> None:
    await page.goto(wharf.url + "/signin")
    await page.get_by_label("User name").fill("alice")
    await page.get_by_label("Personal access token").fill(secret)
    await screenshot(page, "signin")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/packages?done=signed_in")


async def test_sign_in_browse_search_and_copy_the_pull_command(make_wharf, browser):
    wharf, secret, app, tool, notes = await _site(make_wharf)
    host = wharf.url.split("://", 1)[1]
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=wharf.url)
    page = await context.new_page()
    # anonymous: the public packages, not the private one
    await page.goto(wharf.url + "/packages")
    listed = page.locator("ul.packages a.name")
    assert sorted(await listed.all_inner_texts()) == sorted([app, tool])
    assert await page.get_by_role("link", name="Sign in").is_visible()
    await _sign_in(page, wharf, secret)
    assert "You are signed in." in await page.locator(".notice").inner_text()
    assert "Signed in as alice" in await page.locator("header .who").inner_text()
    assert sorted(await listed.all_inner_texts()) == sorted([app, tool, notes])
    await screenshot(page, "packages")
    # search by description
    await page.get_by_label("Search").fill("images of the other")
    await page.get_by_role("button", name="Search").click()
    assert await listed.all_inner_texts() == [tool]
    await page.get_by_label("Search").fill("")
    await page.get_by_label("Visibility").select_option("private")
    await page.get_by_role("button", name="Search").click()
    assert await listed.all_inner_texts() == [notes]
    # the package page
    await page.goto(wharf.url + "/packages")
    await page.get_by_role("link", name=app, exact=True).click()
    await page.wait_for_url(f"**/packages/{app}")
    assert await page.get_by_role("heading", level=1).inner_text() == f"{app} public"
    assert "static files served by nginx" in await page.locator(".description").inner_text()
    assert "Apache-2.0" in await page.locator("dl.facts").inner_text()
    tags = await page.locator("#tags tbody tr").all_inner_texts()
    assert [row.split()[0] for row in tags] == ["latest", "1.0"]
    assert "linux/amd64, linux/arm64" in tags[0]
    await screenshot(page, "package")
    command = await page.locator("#pull-tag").inner_text()
    assert command == f"docker pull {host}/{app}:latest"
    await page.get_by_role("button", name="Copy the pull command by tag").click()
    assert await page.evaluate("navigator.clipboard.readText()") == command
    await page.get_by_role("button", name="Copy the pull command by digest").click()
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"docker pull {host}/{app}@sha256:")
    assert copied == await page.locator("#pull-digest").inner_text()
    await context.close()


async def test_delete_and_restore_a_version_and_change_visibility(make_wharf, browser):
    wharf, secret, app, tool, notes = await _site(make_wharf)
    context = await browser.new_context()
    page = await context.new_page()
    await _sign_in(page, wharf, secret)
    await page.goto(f"{wharf.url}/packages/{tool}/versions")
    rows = page.locator("#versions tbody tr")
    assert await rows.count() == 1 and "v2" in await rows.first.inner_text()
    await rows.first.get_by_role("button", name="Delete").click()
    await page.wait_for_url("**/versions?done=version_deleted")
    assert "The version was deleted" in await page.locator(".notice").inner_text()
    assert await page.locator("#versions").count() == 0 and "No active versions." in await page.inner_text("main")
    assert "v2" in await page.locator("#deleted-versions tbody tr").first.inner_text()
    assert await _pull_status(wharf, tool, "v2") == 404
    await page.locator("#deleted-versions").get_by_role("button", name="Restore").click()
    await page.wait_for_url("**/versions?done=version_restored")
    assert "The version was restored." in await page.locator(".notice").inner_text()
    assert "v2" in await page.locator("#versions tbody tr").first.inner_text()
    assert await _pull_status(wharf, tool, "v2") == 200
    # visibility: the private notes made public; an anonymous visitor now finds them
    anonymous = await (await browser.new_context()).new_page()
    await anonymous.goto(f"{wharf.url}/packages/{notes}")
    assert await anonymous.get_by_role("heading", level=1).inner_text() == "Not found"
    await page.goto(f"{wharf.url}/packages/{notes}")
    await page.get_by_label("Who may pull this package").select_option("public")
    await page.get_by_role("button", name="Change visibility").click()
    await page.wait_for_url(f"**/packages/{notes}?done=visibility_changed")
    assert await page.locator("h1 .badge").inner_text() == "public"
    await anonymous.goto(f"{wharf.url}/packages")
    assert notes in await anonymous.locator("ul.packages").inner_text()
    assert await _pull_status(wharf, notes, "v1") == 200
    await context.close()


async def test_the_pages_read_without_javascript(make_wharf, browser):
    wharf, secret, app, tool, notes = await _site(make_wharf)
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await page.goto(f"{wharf.url}/packages/{app}")
    host = wharf.url.split("://", 1)[1]
    assert await page.locator("#pull-tag").inner_text() == f"docker pull {host}/{app}:latest"
    assert not await page.get_by_role("button", name="Copy the pull command by tag").is_visible()
    # a phone's width: nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.goto(wharf.url + "/signin")
    await page.get_by_label("User name").fill("alice")
    await page.get_by_label("Personal access token").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/packages?done=signed_in")
    assert notes in await page.locator("ul.packages").inner_text()
    await context.close()
