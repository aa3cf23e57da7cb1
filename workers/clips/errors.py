"""Why a clip failed, as the codes its `processingError` carries (seed 002)."""

from __future__ import annotations

from shared.errors import Fatal, Transient

FFMPEG_ERROR = "FFMPEG_ERROR"
FFMPEG_TIMEOUT = "FFMPEG_TIMEOUT"
SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"
INVALID_SEGMENT = "INVALID_SEGMENT"
OUTPUT_CONFLICT = "OUTPUT_CONFLICT"


class ClipFailed(Fatal):
    """Retrying cannot help (bad segments, a missing or unreadable source): the clip is marked failed."""


class InvalidSegment(ClipFailed):
    code = INVALID_SEGMENT


class SourceNotFound(ClipFailed):
    code = SOURCE_NOT_FOUND


class OutputConflict(ClipFailed):
    """The clip's key already holds another tenant's clip."""

    code = OUTPUT_CONFLICT


class FfmpegFailed(ClipFailed):
    code = FFMPEG_ERROR


class FfmpegTransient(Transient):
    """ffmpeg hit a network error or a timeout: worth another attempt; the last one marks the clip failed."""

    code = FFMPEG_ERROR
