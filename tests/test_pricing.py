"""Cost estimates against hand-computed prices for every quality and size."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fal_edit_async import EditImageInput
from fal_edit_async._pricing import estimate_cost

IMG = "https://example.com/a.png"
PROMPT = "x" * 400  # 100 text tokens: $0.0002


@pytest.mark.parametrize(
    ("quality", "size", "per_image"),
    [
        ("low", "1024x1024", "0.011"),
        ("medium", "1024x1024", "0.042"),
        ("high", "1024x1024", "0.167"),
        ("low", "1536x1024", "0.016"),
        ("medium", "1536x1024", "0.063"),
        ("high", "1536x1024", "0.25"),
        ("low", "1024x1536", "0.016"),
        ("medium", "1024x1536", "0.063"),
        ("high", "1024x1536", "0.25"),
    ],
)
def test_every_quality_and_size(quality: str, size: str, per_image: str) -> None:
    """Price = images x per-image price + text and image tokens, rounded up to the cent."""
    value = EditImageInput(
        prompt=PROMPT, image_urls=[IMG], quality=quality, image_size=size,
        input_fidelity="low", num_images=3,
    )  # fmt: skip
    # 3 images; 100 text tokens at $0.002/1k; 135 image tokens at $0.005/1k.
    raw = 3 * Decimal(per_image) + Decimal("0.0002") + Decimal("0.000675")
    expected = (raw * 100).to_integral_value(rounding="ROUND_CEILING") / 100
    estimate = estimate_cost(value)
    assert expected == estimate.usd
    assert not estimate.worst_case


def test_high_fidelity_costs_image_tokens() -> None:
    """Two inputs at high fidelity add 2 x 3,050 image tokens ($0.0305)."""
    value = EditImageInput(prompt="x", image_urls=[IMG, IMG], quality="low", image_size="1024x1024")
    assert Decimal("0.0305") + Decimal("0.000002") == estimate_cost(value).input_usd
    assert Decimal("0.05") == estimate_cost(value).usd  # 0.011 + 0.030502 -> 0.05


def test_auto_is_priced_at_its_worst_case() -> None:
    """quality=auto and image_size=auto are estimated as high at a non-square size."""
    value = EditImageInput(prompt="x", image_urls=[IMG], input_fidelity="low")
    estimate = estimate_cost(value)
    assert estimate.worst_case
    assert Decimal("0.25") == estimate.output_usd
    assert "worst case" in str(estimate)
