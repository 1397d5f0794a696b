"""Draw ``lighthouse.png``, the example input of the README's main command.

Drawn with Pillow, nothing downloaded: run ``python examples/make_lighthouse.py`` to make it
again (the output is the same bytes every time).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
HORIZON = 168


def draw() -> Image.Image:
    """A lighthouse on a rock at dusk, with its beam, the sea and a few stars."""
    image = Image.new("RGB", (SIZE, SIZE))
    pen = ImageDraw.Draw(image)
    for y in range(HORIZON):  # sky: deep blue at the top to orange at the horizon
        t = y / HORIZON
        pen.line(
            [(0, y), (SIZE, y)], fill=(int(30 + 220 * t), int(40 + 110 * t), int(110 - 40 * t))
        )
    for x, y in [(20, 18), (70, 40), (120, 12), (200, 30), (236, 60), (160, 52)]:
        pen.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(255, 250, 220))
    pen.ellipse([186, 110, 226, 150], fill=(255, 214, 120))  # the setting sun
    pen.rectangle([0, HORIZON, SIZE, SIZE], fill=(24, 70, 120))  # sea
    for y in range(HORIZON + 8, SIZE, 12):
        for x in range(-20 + (y % 24), SIZE, 40):
            pen.arc([x, y, x + 24, y + 8], 200, 340, fill=(120, 170, 210), width=2)
    pen.polygon([(20, 200), (60, 160), (130, 158), (170, 200)], fill=(70, 62, 58))  # rock
    pen.polygon([(78, 162), (112, 162), (104, 70), (86, 70)], fill=(240, 240, 235))  # tower
    for top in (86, 118, 146):
        bottom = top + 12
        left, right = 86 - (top - 70) * 0.09, 104 + (top - 70) * 0.09
        pen.polygon(
            [(left, top), (right, top), (right + 1.2, bottom), (left - 1.2, bottom)],
            fill=(200, 40, 40),
        )
    pen.rectangle([84, 56, 106, 70], fill=(255, 236, 140))  # lamp room
    pen.polygon([(80, 56), (110, 56), (95, 40)], fill=(200, 40, 40))  # roof
    pen.polygon([(106, 60), (250, 30), (250, 80)], fill=(255, 240, 170))  # beam
    pen.rectangle([91, 140, 99, 160], fill=(60, 50, 50))  # door
    return image


if __name__ == "__main__":
    out = Path(__file__).with_name("lighthouse.png")
    draw().save(out, format="PNG", optimize=True)
    print(f"wrote {out}")
