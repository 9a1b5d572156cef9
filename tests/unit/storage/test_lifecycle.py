"""Reply audio lifecycle against the S3 API over HTTP (moto's server) and a real Postgres:
retention deletes only what is old and keeps the text, replicas sweeping at once share the
work, deletes are idempotent, and the S3 client rides out 5xx answers until they stop."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from botocore.exceptions import ClientError

from services.common import db, ids, objectstore
from services.common.settings import ServiceSettings
from services.storage.retention import expire_audio
from tests.s3proxy import S3Proxy


def _settings(s3_url: str, bucket: str = "parley-lifecycle") -> ServiceSettings:
    return ServiceSettings(
        s3_endpoint_url=s3_url,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_region="us-east-1",
        s3_bucket=bucket,
    )


@pytest.fixture
async def store(s3):
    async with objectstore.ObjectStore(_settings(s3.url)) as st:
        await st.ensure_bucket()
        yield st


@pytest.fixture
async def repo(database_url):
    pool = await db.create_pool(database_url)
    yield db.Database(pool)
    await pool.close()


# Its own avatar: the database is the session's, and the demo avatar's voice is the one the
# end-to-end stack speaks with.
AVATAR_ID = ids.new_id()


async def _conversation_with_replies(repo: db.Database, store, ages_h: list[float]) -> tuple[str, list[str]]:
    """A conversation with one reply per age, each with its audio stored that long ago."""
    user = ids.user_id_for(f"lifecycle-{ids.new_id()}")
    await repo.users.ensure(user, user)
    conv = ids.new_id()
    await repo.conversations.create(conv, user, [AVATAR_ID])
    replies = []
    for n, age in enumerate(ages_h):
        session = ids.new_id()
        user_msg = ids.user_message_id(conv, session, "text", n)
        await repo.messages.add_user(user_msg, conv, "text", session, n, f"question {n}", {})
        reply = ids.reply_id(user_msg, AVATAR_ID)
        await repo.messages.start_reply(reply, conv, user_msg, AVATAR_ID)
        await repo.messages.finish_reply(reply, f"answer {n}", "complete", None, {})
        key = objectstore.reply_audio_key(conv, reply)
        await store.put(key, b"RIFF....WAVE", "audio/wav")
        await repo.messages.set_audio(reply, key, 1.0, {})
        await repo.pool.execute(
            "UPDATE messages SET audio_stored_at = now() - $2::interval WHERE id=$1", reply, dt.timedelta(hours=age)
        )
        replies.append(reply)
    return conv, replies


async def _row(repo: db.Database, message_id: str):
    return await repo.pool.fetchrow(
        "SELECT text, status, audio_key, audio_expired_at FROM messages WHERE id=$1", message_id
    )


@pytest.fixture(autouse=True)
async def avatar(repo):
    await repo.avatars.upsert(db.Avatar(AVATAR_ID, "Lif", None, "You are {name}.", "en", "voices/none.wav", None))


async def test_retention_deletes_only_old_audio_and_keeps_the_text(repo, store):
    conv, (old, recent) = await _conversation_with_replies(repo, store, [30.0, 2.0])
    old_key, recent_key = objectstore.reply_audio_key(conv, old), objectstore.reply_audio_key(conv, recent)

    expired = await expire_audio(repo.messages, store, dt.timedelta(hours=24))

    assert expired >= 1
    assert not await store.exists(old_key)
    assert await store.exists(recent_key)
    gone, kept = await _row(repo, old), await _row(repo, recent)
    assert gone["text"] == "answer 0" and gone["status"] == "complete"
    assert gone["audio_key"] is None and gone["audio_expired_at"] is not None
    assert kept["audio_key"] == recent_key and kept["audio_expired_at"] is None
    listed = {m.id: m for m in await repo.messages.of_conversation(conv)}
    assert listed[old].audio_expired is True and listed[recent].audio_expired is False

    await repo.messages.set_audio(old, old_key, 1.0, {})  # a late redelivery does not bring it back
    assert (await _row(repo, old))["audio_key"] is None
    assert await expire_audio(repo.messages, store, dt.timedelta(hours=24)) == 0  # nothing left to do


async def test_replicas_sweeping_at_once_share_the_work(repo, store):
    conv, replies = await _conversation_with_replies(repo, store, [48.0] * 12)
    counts = await asyncio.gather(*(expire_audio(repo.messages, store, dt.timedelta(hours=24)) for _ in range(3)))
    assert sum(counts) >= 12
    for reply in replies:
        assert (await _row(repo, reply))["audio_expired_at"] is not None
        assert not await store.exists(objectstore.reply_audio_key(conv, reply))


async def test_deleting_objects_already_gone_succeeds(store):
    await store.put("tts/x/y.wav", b"data", "audio/wav")
    await store.delete_many(["tts/x/y.wav", "tts/x/never-there.wav"])
    await store.delete_many(["tts/x/y.wav"])
    assert not await store.exists("tts/x/y.wav")


async def test_uploads_ride_out_5xx_and_fail_clearly_when_it_persists(s3, store):
    with S3Proxy(s3.url, fail_writes=2) as flaky:
        async with objectstore.ObjectStore(_settings(flaky.url)) as through:
            await through.put("tts/flaky/a.wav", b"first", "audio/wav")
        assert flaky.refused == 2
    assert await store.get("tts/flaky/a.wav") == b"first"

    with S3Proxy(s3.url, fail_writes=1000) as down:
        async with objectstore.ObjectStore(_settings(down.url)) as through:
            with pytest.raises(ClientError) as failed:
                await through.put("tts/flaky/b.wav", b"second", "audio/wav")
        assert failed.value.response["Error"]["Code"] in ("503", "ServiceUnavailable")
        assert down.refused == 6  # the request and botocore's five retries (standard mode), then the error
    assert not await store.exists("tts/flaky/b.wav")


async def test_urls_are_signed_for_the_configured_time_or_public(s3):
    """A presigned GET expires after PARLEY_S3_URL_EXPIRY_S. moto's server checks neither
    expiry nor signatures, so what is checked is what Parley controls: the lifetime the URL
    is signed for. With a public base URL (an R2 custom domain) the URL is plain."""
    from urllib.parse import parse_qs, urlparse

    settings = _settings(s3.url)
    settings.s3_url_expiry_s = 90
    async with objectstore.ObjectStore(settings) as st:
        await st.ensure_bucket()
        await st.put("tts/c/m.wav", b"RIFF", "audio/wav")
        signed = urlparse(await st.url("tts/c/m.wav"))
        query = parse_qs(signed.query)
        assert query["X-Amz-Expires"] == ["90"] and query["X-Amz-Signature"]
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (await http.get(signed.geturl())).content == b"RIFF"
    settings.s3_public_base_url = "https://audio.example.org/"
    async with objectstore.ObjectStore(settings) as st:
        assert await st.url("tts/c/m.wav") == "https://audio.example.org/tts/c/m.wav"
