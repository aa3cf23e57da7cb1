"""What a worker makes of a call AWS refuses it: not a least-privilege question (the scenarios answer
that), but where the refusal ends up, run on the same IAM-enforcing emulator with a permission withheld."""

from __future__ import annotations

from pathlib import Path

from shared.registry import Registry
from shared.settings import load_settings
from tests.clips_helpers import clip_item, run_clips, statuses
from tests.iam.actions import removals
from tests.iam.harness import IamEmulator, Run, exercise, policy_for
from tests.iam.scenarios.clips import given_a_clip_generation_job
from workers.clips import WORKER as CLIPS
from workers.clips.store import FAILED, IN_PROGRESS


async def test_a_clip_refused_its_upload_ends_generation_failed_with_the_refusal(
    iam_emulator: IamEmulator, tmp_path: Path
) -> None:
    # Given the clips worker holding its policy without s3:PutObject, and one clip to make
    (without_put,) = [
        r for r in removals(policy_for(CLIPS, load_settings(), iam_emulator.account)) if r.action == "s3:PutObject"
    ]

    async def refused_upload(run: Run) -> None:
        await given_a_clip_generation_job(run, "ep-refused")
        # When the worker renders it (one attempt: AccessDenied is retried like any AWS error otherwise)
        await run_clips(run.worker, max_attempts=1)
        # Then the clip could not be stored, and its item says why
        item = await clip_item(run.admin, "ep-refused", "c1")
        assert statuses(item) == [IN_PROGRESS, FAILED]
        assert "AccessDenied" in item["processingError"]["code"] + item["processingError"]["message"]

    outcome = await exercise(iam_emulator, Registry.of([CLIPS]), CLIPS, refused_upload, tmp_path, without_put.apply)

    # And nothing else was refused
    assert outcome.error is None, outcome.error
    assert {p.action for p in outcome.denied} == {"s3:PutObject"}
