"""What an edit costs, estimated before anything is paid.

Prices are fal's published ones for ``fal-ai/gpt-image-1/edit-image``: a price per output
image by quality and size, plus input tokens (text at $0.002 and images at $0.005 per 1,000).
Where the model decides (``quality=auto``, ``image_size=auto``) the estimate takes the worst
case and says so, so a budget built on it is never crossed. A request is rounded up to the
cent, as fal bills it.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

import attrs

from ._models import EditImageInput, ImageSize, InputFidelity, Quality

__all__ = ["PRICE_PER_IMAGE", "CostEstimate", "estimate_cost"]

#: USD per output image, by quality, for 1024x1024 and for the other sizes.
PRICE_PER_IMAGE: dict[Quality, tuple[Decimal, Decimal]] = {
    Quality.LOW: (Decimal("0.011"), Decimal("0.016")),
    Quality.MEDIUM: (Decimal("0.042"), Decimal("0.063")),
    Quality.HIGH: (Decimal("0.167"), Decimal("0.25")),
}
TEXT_TOKEN_PRICE = Decimal("0.002") / 1000
IMAGE_TOKEN_PRICE = Decimal("0.005") / 1000
#: Image tokens per input image, by input fidelity (for a 1024x1024 input).
IMAGE_TOKENS = {InputFidelity.LOW: 135, InputFidelity.HIGH: 3050}
_CENT = Decimal("0.01")


@attrs.frozen(kw_only=True)
class CostEstimate:
    """The estimated price of one request, in USD, and whether it assumed a worst case."""

    usd: Decimal
    worst_case: bool
    output_usd: Decimal
    input_usd: Decimal

    def __str__(self) -> str:
        return f"${self.usd}" + (
            " (worst case: quality or size is auto)" if self.worst_case else ""
        )


def _text_tokens(prompt: str) -> int:
    # About four bytes of English per token; rounded up so the estimate errs high.
    return math.ceil(len(prompt.encode()) / 4)


def estimate_cost(input: EditImageInput) -> CostEstimate:
    """Estimate one request's price, rounded up to the cent.

    ``quality=auto`` is priced as high and ``image_size=auto`` as a non-square size, the
    most the model may choose; ``worst_case`` is then True.
    """
    quality = Quality.HIGH if input.quality is Quality.AUTO else input.quality
    square, other = PRICE_PER_IMAGE[quality]
    per_image = square if input.image_size is ImageSize.SQUARE else other
    output = per_image * input.num_images
    tokens_in = (
        _text_tokens(input.prompt) * TEXT_TOKEN_PRICE
        + IMAGE_TOKENS[input.input_fidelity] * len(input.image_urls) * IMAGE_TOKEN_PRICE
    )
    total = (output + tokens_in).quantize(_CENT, rounding=ROUND_CEILING)
    worst = input.quality is Quality.AUTO or input.image_size is ImageSize.AUTO
    return CostEstimate(usd=total, worst_case=worst, output_usd=output, input_usd=tokens_in)
