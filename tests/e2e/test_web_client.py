"""The web client at `/` in a real headless Chromium: a fake microphone speaks, the avatar answers.

Chromium's fake capture device plays a WAV into getUserMedia, so the page's own audio path
(AudioWorklet at 16 kHz, PCM16 frames over the WebSocket) is what reaches the gateway. The
device starts the file from its beginning each time the page opens the microphone, so a test
speaks again, at the moment it chooses, by turning the microphone off and on.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess

import httpx
import pytest

from tests.client import auth_headers, token_for
from tests.conftest import SPOKEN
from tests.fakes.llm_server import reply_for
from tools.wer import recalled

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def mic_wav(speech_wav, tmp_path):
    """The spoken fixture, then a minute of silence: one turn, and no repeat while a test runs."""
    out = tmp_path / "mic.wav"
    subprocess.run(["sox", str(speech_wav), str(out), "pad", "0", "60"], check=True)
    return out


@contextlib.asynccontextmanager
async def browser_page(mic_wav=None):
    """Debian's Chromium (no browser download), with the WAV as its microphone."""
    from playwright.async_api import async_playwright

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
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(30000)
            yield page
        finally:
            await browser.close()


async def sign_in_and_connect(page, stack, user: str) -> dict:
    """Open the page with the token in the fragment, as the local stack's link does; start a session."""
    await page.goto(f"{stack['http_url']}/#token={token_for(user)}")
    assert "token" not in page.url  # taken out of the address bar
    await page.locator("#avatar option").first.wait_for(state="attached")
    await page.click("#connect")
    return await _wait_event(page, "(e) => e.type === 'session.started'")


async def _wait_event(page, predicate: str, timeout: float = 60000) -> dict:
    """The first event the page received that matches the JS predicate."""
    handle = await page.wait_for_function(f"window.parley.events.find({predicate})", timeout=timeout, polling=100)
    return await handle.json_value()


async def _events(page, type_: str) -> list[dict]:
    """The events of a type the page received (window.parley is the client's own record)."""
    return await page.evaluate("(type) => window.parley.events.filter((e) => e.type === type)", type_)


async def _streamed(page, message_id: str) -> str:
    """The reply's text as the LLM streamed it: what was heard of it is a beginning of this."""
    deltas = [e for e in await _events(page, "reply.delta") if e["message_id"] == message_id]
    return "".join(e["text"] for e in sorted(deltas, key=lambda e: e["delta_seq"]))


def _client_reports(stack) -> float:
    """How many client-measured voice-to-voice figures the gateway has taken."""
    text = httpx.get(f"{stack['http_url']}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("parley_client_voice_to_voice_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def _history(stack, user: str, conversation_id: str) -> list[dict]:
    resp = httpx.get(
        f"{stack['http_url']}/v1/conversations/{conversation_id}/messages",
        params={"limit": 200},
        headers=auth_headers(user),
        timeout=10,
    )
    resp.raise_for_status()
    body = resp.json()
    return body["items"] if isinstance(body, dict) else body


def _reply(page, message_id: str):
    return page.locator(f'#log .avatar[data-id="{message_id}"]')


async def test_a_spoken_turn_plays_is_measured_and_is_there_after_a_reload(stack, mic_wav):
    from playwright.async_api import expect

    reported = _client_reports(stack)
    async with browser_page(mic_wav) as page:
        started = await sign_in_and_connect(page, stack, "browser-speaker")
        await page.click("#mic")
        final = await _wait_event(page, "(e) => e.type === 'transcript.final'", 90000)
        await page.click("#mic")  # one turn is enough
        # The WAV's words, through the page's own capture path: Chromium's noise suppression and
        # gain control (the page asks for them, as a real microphone needs) reshape the audio
        # before it is sent, so the words must be there, in order, rather than match a batch read
        # of the file (seen: "about" heard as "and out in", 8 of 9 words).
        assert recalled(SPOKEN, final["text"]) >= 0.75, final["text"]
        assert await _events(page, "transcript.partial"), "partials are shown while the person speaks"
        heard = page.locator(f'#log .user[data-id="{final["message_id"]}"]')
        await expect(heard.locator(".text")).to_have_text(final["text"])
        await expect(heard).not_to_have_class(re.compile(r"\bpartial\b"))

        reply = await _wait_event(
            page, f"(e) => e.type === 'reply.started' && e.user_message_id === '{final['message_id']}'"
        )
        mid = reply["message_id"]
        await expect(_reply(page, mid).locator(".audio")).to_be_visible(timeout=120000)
        await expect(_reply(page, mid).locator(".text")).to_have_text(reply_for(final["text"]))
        # The reply was heard: played out through the page's analyser, not only received.
        await page.wait_for_function(
            f"window.parley.player.finished(window.parley.player.replies.get('{mid}'))", timeout=60000
        )
        assert await page.evaluate("window.parley.player.level.maxPeak") > 0.005
        assert float(await page.locator("#peak").text_content()) > 0.005
        await expect(_reply(page, mid).locator(".v2v")).to_contain_text("voice to voice")
        assert await _events(page, "error") == []

        # Continue the same conversation after a reload: the token and the conversation stay in
        # this tab, the history is shown, and a typed turn is answered in it.
        await page.reload()
        await expect(page.locator("#status")).to_have_text("signed in")
        await expect(page.locator(f'#log .user[data-id="{final["message_id"]}"] .text')).to_have_text(final["text"])
        await expect(_reply(page, mid).locator(".text")).to_have_text(reply_for(final["text"]))
        await expect(_reply(page, mid).locator(".audio")).to_be_visible()
        await expect(page.locator("#connect")).to_have_text("Continue")
        await page.click("#connect")
        again = await _wait_event(page, "(e) => e.type === 'session.started'")
        assert again["conversation_id"] == started["conversation_id"]
        await page.fill("#text", "And now in writing?")
        await page.press("#text", "Enter")
        typed = await _wait_event(page, "(e) => e.type === 'user.message'")
        await expect(page.locator(f'#log .user[data-id="{typed["message_id"]}"] .text')).to_have_text(
            "And now in writing?"
        )
        answer = await _wait_event(
            page, f"(e) => e.type === 'reply.started' && e.user_message_id === '{typed['message_id']}'"
        )
        await expect(_reply(page, answer["message_id"]).locator(".audio")).to_be_visible(timeout=120000)
        await expect(_reply(page, answer["message_id"]).locator(".text")).to_have_text(reply_for("And now in writing?"))
        assert await _events(page, "error") == []
    assert _client_reports(stack) >= reported + 1  # the spoken turn's latency, measured in the page
    rows = _history(stack, "browser-speaker", started["conversation_id"])
    assert [(r["role"], r["text"]) for r in rows] == [
        ("user", final["text"]),
        ("avatar", reply_for(final["text"])),
        ("user", "And now in writing?"),
        ("avatar", reply_for("And now in writing?")),
    ]


@pytest.fixture
def slow_replies(fake_llm):
    """Replies that stream for several seconds, so the person surely speaks while one plays,
    however long a loaded machine takes to hear them."""
    fake_llm.token_delay_s = 0.35
    yield
    fake_llm.token_delay_s = 0.005


async def test_speaking_over_a_reply_stops_it_and_so_does_the_stop_button(stack, mic_wav, slow_replies):
    from playwright.async_api import expect

    user = "browser-barger"
    async with browser_page(mic_wav) as page:
        started = await sign_in_and_connect(page, stack, user)
        await page.click("#mic")
        first = await _wait_event(page, "(e) => e.type === 'transcript.final'", 90000)
        reply = await _wait_event(
            page, f"(e) => e.type === 'reply.started' && e.user_message_id === '{first['message_id']}'"
        )
        mid = reply["message_id"]
        # Its audio is playing: speak again (the microphone restarts the file from its speech).
        await page.wait_for_function(
            f"(r => r && window.parley.player.started(r))(window.parley.player.replies.get('{mid}'))",
            timeout=120000,
        )
        await page.click("#mic")
        await page.click("#mic")
        stop = await _wait_event(page, "(e) => e.type === 'playback.stop'")
        assert stop["message_id"] == mid
        flushed = await page.evaluate(f"""(() => {{
            const p = window.parley.player, r = p.replies.get('{mid}');
            return {{stopped: r.stopped, audible: p.position(r) !== null, reported: r.reportedEnd}};
        }})()""")
        assert flushed == {"stopped": True, "audible": False, "reported": True}
        await expect(_reply(page, mid)).to_have_attribute("data-status", "interrupted")
        interrupted = await _wait_event(page, f"(e) => e.type === 'reply.interrupted' && e.message_id === '{mid}'")
        streamed = await _streamed(page, mid)
        assert streamed.startswith(interrupted["text"]) and len(interrupted["text"]) < len(streamed)

        # The speech that cut in is the next turn; its reply is stopped with the button.
        second = await _wait_event(
            page, f"(e) => e.type === 'transcript.final' && e.message_id !== '{first['message_id']}'", 90000
        )
        await page.click("#mic")
        answer = await _wait_event(
            page, f"(e) => e.type === 'reply.started' && e.user_message_id === '{second['message_id']}'"
        )
        answer_id = answer["message_id"]
        await page.wait_for_function(
            f"(r => r && window.parley.player.started(r))(window.parley.player.replies.get('{answer_id}'))",
            timeout=120000,
        )
        await page.click("#stop")
        stopped = await _wait_event(page, f"(e) => e.type === 'reply.interrupted' && e.message_id === '{answer_id}'")
        streamed = await _streamed(page, answer_id)
        assert streamed.startswith(stopped["text"]) and len(stopped["text"]) < len(streamed)
        assert await page.evaluate(f"window.parley.player.replies.get('{answer_id}').stopped")
        await expect(_reply(page, answer_id)).to_have_attribute("data-status", "interrupted")
        assert await _events(page, "error") == []
    stored = {r["id"]: r for r in _history(stack, user, started["conversation_id"])}
    assert stored[mid]["status"] == "interrupted"
    assert stored[mid]["text"] == interrupted["text"]
    assert stored[answer_id]["status"] == "interrupted"


async def test_the_client_resumes_after_a_network_drop(stack, fake_llm):
    from playwright.async_api import expect

    user = "browser-roamer"
    async with browser_page() as page:
        sent: list[dict] = []
        page.on(
            "websocket",
            lambda ws: ws.on("framesent", lambda f: sent.append(json.loads(f)) if isinstance(f, str) else None),
        )
        # Signing in by pasting a token: an expired one is refused with a reason.
        await page.goto(f"{stack['http_url']}/")
        await page.fill("#token", token_for(user, ttl_s=-120))
        await page.click("#use-token")
        await expect(page.locator("#signin-why")).to_contain_text("refused or has expired")
        await page.fill("#token", token_for(user))
        await page.click("#use-token")
        await expect(page.locator("#who")).to_have_text(user)
        await page.locator("#avatar option").first.wait_for(state="attached")
        await page.click("#connect")
        started = await _wait_event(page, "(e) => e.type === 'session.started'")
        await page.fill("#text", "First question?")
        await page.click("#send")
        first = await _wait_event(page, "(e) => e.type === 'audio.stored'", 120000)
        seen = await page.evaluate("window.parley.state.lastCursor")
        assert seen >= first["cursor"]

        fake_llm.token_delay_s = 0.2  # the second reply streams for seconds: the drop lands in it
        try:
            await page.fill("#text", "Second question, then the network goes?")
            await page.click("#send")
            pending = await _wait_event(
                page, "(e) => e.type === 'reply.started' && e.message_id !== '" + first["message_id"] + "'"
            )
            await page.context.set_offline(True)
            await expect(page.locator("#status")).to_contain_text("retrying")
            await page.wait_for_timeout(2000)  # reconnect attempts fail meanwhile
            await page.context.set_offline(False)
            resumed = await _wait_event(page, "(e) => e.type === 'session.started' && e.resumed")
        finally:
            fake_llm.token_delay_s = 0.005
        assert resumed["session_id"] == started["session_id"]
        resume = [m for m in sent if m.get("type") == "session.start" and m.get("resume")]
        assert resume[0]["resume"]["session_id"] == started["session_id"]
        assert resume[0]["resume"]["last_cursor"] >= seen  # it resumes after what it had seen

        mid = pending["message_id"]
        text = reply_for("Second question, then the network goes?")
        await expect(_reply(page, mid).locator(".audio")).to_be_visible(timeout=120000)
        await expect(_reply(page, mid).locator(".text")).to_have_text(text)
        await expect(_reply(page, mid)).to_have_count(1)
        assert [e["message_id"] for e in await _events(page, "reply.done")].count(mid) == 1

        # A session past resuming (4410) gives way to a new one in the same conversation.
        await page.evaluate("window.parley.state.sessionId = crypto.randomUUID(); window.parley.drop()")
        fresh = await _wait_event(
            page, f"(e) => e.type === 'session.started' && e.session_id !== '{started['session_id']}'"
        )
        assert fresh["conversation_id"] == started["conversation_id"] and fresh["resumed"] is False
        assert 4410 in [c["code"] for c in await page.evaluate("window.parley.closes")]
        await expect(_reply(page, mid).locator(".text")).to_have_text(text)  # the history, reloaded
        await expect(_reply(page, first["message_id"]).locator(".audio")).to_be_visible()
        assert await _events(page, "error") == []
