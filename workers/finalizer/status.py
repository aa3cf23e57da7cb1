"""A job's final status: COMPLETED, PARTIAL_SUCCESS or FAILED.

Keys of `processing_results` are the pipeline's own stage names, in pipeline order.

- The seed's pipeline (stage names within `transcription`, `llm_processing`) keeps the seed's exact rule:
  transcription FAILED → FAILED; both COMPLETED → COMPLETED; transcription COMPLETED and the LLM
  PARTIAL or FAILED → PARTIAL_SUCCESS; anything else (a PARTIAL or missing transcription, a missing LLM
  stage) → FAILED.
- Any other pipeline: its first stage is the critical one. First stage FAILED → FAILED; every stage
  COMPLETED → COMPLETED; otherwise (first stage COMPLETED or PARTIAL, a later one not COMPLETED) →
  PARTIAL_SUCCESS. No stages at all → the event's own status.

Two corrections apply to both, because the seed looked at `processing_results` only:
- an `error.stage` absent from `processing_results` counts as a FAILED stage (a pipeline that died in a
  stage it had not reported yet);
- an event whose own status is FAILED is never COMPLETED: at best PARTIAL_SUCCESS.
"""

from __future__ import annotations

from workers.finalizer.models import FinalEvent, FinalStatus, StageStatus

SEED_STAGES = frozenset({"transcription", "llm_processing"})


def stage_statuses(event: FinalEvent) -> dict[str, StageStatus]:
    statuses: dict[str, StageStatus] = {name: r.status for name, r in event.processing_results.items()}
    if event.error is not None and event.error.stage and event.error.stage not in statuses:
        statuses[event.error.stage] = "FAILED"
    return statuses


def determine_final_status(event: FinalEvent) -> FinalStatus:
    stages = stage_statuses(event)
    seed_pipeline = bool(stages) and set(stages) <= SEED_STAGES
    status = seed_rule(stages) if seed_pipeline else generic_rule(stages, event)
    if event.status == "FAILED" and status == "COMPLETED":
        return "PARTIAL_SUCCESS"
    return status


def seed_rule(stages: dict[str, StageStatus]) -> FinalStatus:
    transcription = stages.get("transcription")
    llm = stages.get("llm_processing")
    if transcription == "FAILED":
        return "FAILED"
    if transcription == "COMPLETED" and llm == "COMPLETED":
        return "COMPLETED"
    if transcription == "COMPLETED" and llm in ("PARTIAL", "FAILED"):
        return "PARTIAL_SUCCESS"
    return "FAILED"


def generic_rule(stages: dict[str, StageStatus], event: FinalEvent) -> FinalStatus:
    if not stages:
        return event.status
    ordered = list(stages.values())
    if ordered[0] == "FAILED":
        return "FAILED"
    if all(s == "COMPLETED" for s in ordered):
        return "COMPLETED"
    return "PARTIAL_SUCCESS"
