"""Uploading a local file to S3 without holding it in memory: one PUT when small, else multipart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MiB = 1024 * 1024
PART_BYTES = 16 * MiB  # S3 parts are 5 MiB-5 GiB; 16 MiB keeps 10,000 parts above 150 GiB


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(size)


async def upload_file(
    s3: S3Client,
    bucket: str,
    key: str,
    path: Path,
    *,
    content_type: str,
    threshold: int = 64 * MiB,
    part_bytes: int = PART_BYTES,
) -> int:
    size = (await asyncio.to_thread(path.stat)).st_size
    if size <= threshold:
        body = await asyncio.to_thread(path.read_bytes)
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return size
    upload = await s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
    upload_id = upload["UploadId"]
    try:
        parts = []
        for number, offset in enumerate(range(0, size, part_bytes), start=1):
            chunk = await asyncio.to_thread(_read, path, offset, part_bytes)
            part = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
            parts.append({"ETag": part["ETag"], "PartNumber": number})
        await s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
        )
    except BaseException:
        # An abandoned upload keeps its parts (and their storage cost) until aborted.
        await asyncio.shield(s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
        raise
    return size
