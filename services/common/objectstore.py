"""S3-compatible object storage (Cloudflare R2 in production) through aioboto3.

Key layout follows what users of the seed systems expect: `tts/` for reply audio,
`voices/` for reference voices, `avatars/` for avatar images.
"""

from __future__ import annotations

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .settings import ServiceSettings


def reply_audio_key(conversation_id: str, message_id: str) -> str:
    return f"tts/{conversation_id}/{message_id}.wav"


def voice_key(avatar_id: str, sha256_hex: str) -> str:
    """A reference voice, by its avatar and content: a replaced voice gets a new key, so no TTS
    worker keeps using the voice it cloned from the old recording (they cache clones by key)."""
    return f"voices/{avatar_id}/{sha256_hex[:16]}.wav"


class ObjectStore:
    """One long-lived client per process; aioboto3 clients are costly to create per call."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._session = aioboto3.Session()
        self._cm = None
        self.client = None

    async def __aenter__(self) -> ObjectStore:
        s = self.settings
        self._cm = self._session.client(
            "s3",
            endpoint_url=s.s3_endpoint_url,
            region_name=s.s3_region if s.s3_region != "auto" or s.s3_endpoint_url else "us-east-1",
            aws_access_key_id=s.s3_access_key_id,
            aws_secret_access_key=s.s3_secret_access_key,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                signature_version="s3v4",
            ),
        )
        self.client = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self.client.create_bucket(Bucket=self.bucket)

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    async def delete_many(self, keys: list[str]) -> None:
        """Delete objects (a missing one counts as deleted), up to 1000 per request."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            resp = await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise RuntimeError(f"could not delete {len(errors)} object(s), e.g. {errors[0]}")

    async def get(self, key: str) -> bytes:
        resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            return await body.read()

    async def url(self, key: str) -> str:
        """A public URL when a custom domain fronts the bucket, else a presigned GET."""
        base = self.settings.s3_public_base_url
        if base:
            return f"{base.rstrip('/')}/{key}"
        return await self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.settings.s3_url_expiry_s,
        )
