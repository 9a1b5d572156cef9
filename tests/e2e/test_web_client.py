"""The web client at `/` in a real headless Chromium: a fake microphone speaks, the avatar answers.

Chromium's fake capture device plays a WAV into getUserMedia, so the page's own audio path
(AudioWorklet at 16 kHz, PCM16 frames over the WebSocket) is what reaches the gateway.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def mic_wav(speech_wav, tmp_path):
    """The spoken fixture followed by enough silence to end the turn (Chromium loops the file)."""
    out = tmp_path / "mic.wav"
    subprocess.run(["sox", str(speech_wav), str(out), "pad", "0", "4"], check=True)
    return out


@contextlib.asynccontextmanager
async def connected_page(stack, user: str, mic_wav=None):
    """Debian's Chromium (no browser download) on the web client, connected as `user`."""
    from playwright.async_api import async_playwright, expect

    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if mic_wav is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
        ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page()
            await page.goto(stack["http_url"] + "/")
            await page.fill("#user", user)
            await page.click("#connect")
            await expect(page.locator("#log .meta").first).to_contain_text("conversation", timeout=15000)
            yield page
        finally:
            await browser.close()


async def test_web_client_speaks_and_types_to_the_avatar(stack, mic_wav, tmp_path):
    from playwright.async_api import expect

    reported = _client_reports(stack)
    async with connected_page(stack, "browser-user", mic_wav) as page:
        await page.click("#mic")
        await expect(page.locator("#log .user").first).to_contain_text("You: ", timeout=60000)
        await expect(page.locator("#log .avatar a").first).to_have_text(" [audio]", timeout=120000)
        await page.click("#mic")  # stop the microphone before typing
        await page.fill("#text", "And now in writing?")
        await page.click("#send")
        typed_reply = page.locator('#log .user:has-text("And now in writing?") ~ .avatar a').first
        await expect(typed_reply).to_have_text(" [audio]", timeout=120000)
        assert int(await page.locator("#frames").text_content()) > 0
        assert await page.locator("#log .err").count() == 0
        await page.screenshot(path=str(tmp_path / "web-client.png"), full_page=True)
    assert _client_reports(stack) >= reported + 1  # the spoken turn's latency, measured in the page


def _client_reports(stack) -> float:
    """How many client-measured voice-to-voice figures the gateway has taken."""
    text = httpx.get(f"{stack['http_url']}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("parley_client_voice_to_voice_seconds_count"):
            return float(line.split()[-1])
    return 0.0


async def test_web_client_interrupt_keeps_what_was_heard(stack):
    from playwright.async_api import expect

    from tests.fakes.llm_server import reply_for

    async with connected_page(stack, "browser-interrupter") as page:
        await page.fill("#text", "Please talk for a while")
        await page.click("#send")
        await expect(page.locator("#frames")).not_to_have_text("0", timeout=60000)
        await page.wait_for_timeout(1500)  # a moment of playback
        await page.click("#interrupt")
        reply = page.locator("#log .avatar.interrupted")
        await expect(reply).to_contain_text("[interrupted]", timeout=30000)
        heard = (await reply.text_content()).removeprefix("Ada: ").removesuffix(" [interrupted]")
    full = reply_for("Please talk for a while").split()
    assert heard.split() == full[: len(heard.split())]  # what was heard is the start of the reply
    assert 0 < len(heard.split()) < len(full)
