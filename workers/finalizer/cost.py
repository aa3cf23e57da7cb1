"""The seed's cost estimate (seeds/000 §4.3), in exact decimal arithmetic.

    Transcribe: $0.024 per minute of video
    Bedrock:    tokens split 67 % input at $0.003/1K, 33 % output at $0.015/1K
    S3:         negligible

Worked example (the seed's success event: 7,200 s of video, 45,000 tokens):
    120 min × 0.024 = 2.88; 45,000 × 0.67 / 1000 × 0.003 = 0.09045; 45,000 × 0.33 / 1000 × 0.015 = 0.22275
    → 3.1932 → $3.19. (The seed's sample output shows $1.45, which its own formula cannot produce.)

Fixed from the seed: a job that reports no tokens used no tokens (the seed charged a phantom 45,000),
and rounding is half-up on exact decimals (float `round` turns 2.675 into 2.67).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

TRANSCRIBE_PER_MINUTE = Decimal("0.024")
BEDROCK_INPUT_PER_1K = Decimal("0.003")
BEDROCK_OUTPUT_PER_1K = Decimal("0.015")
INPUT_SHARE = Decimal("0.67")
OUTPUT_SHARE = Decimal("0.33")
CENT = Decimal("0.01")


def transcribe_cost(transcription_seconds: float) -> Decimal:
    # Multiply before dividing: seconds / 60 is rarely exact, and its error could flip a half cent.
    return Decimal(str(transcription_seconds)) * TRANSCRIBE_PER_MINUTE / 60


def bedrock_cost(tokens: int) -> Decimal:
    return (Decimal(tokens) * INPUT_SHARE * BEDROCK_INPUT_PER_1K / 1000) + (
        Decimal(tokens) * OUTPUT_SHARE * BEDROCK_OUTPUT_PER_1K / 1000
    )


def calculate_cost(transcription_seconds: float, tokens: int) -> Decimal:
    """The job's estimated cost in USD, rounded to the cent."""
    return (transcribe_cost(transcription_seconds) + bedrock_cost(tokens)).quantize(CENT, ROUND_HALF_UP)
