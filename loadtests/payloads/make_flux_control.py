"""Draw loadtests/payloads/flux_control.jpg, the control image shipped for flux-depth-pro.

    python loadtests/payloads/make_flux_control.py

A small indoor scene with clear depth cues (a receding floor and wall, a desk in front, a lamp
and a ball at different distances), 160x120 (4:3), so the tiny profile answers 64x48 and the
full profile 1024x768. Deterministic: running it again writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUTPUT = Path(__file__).resolve().parent / "flux_control.jpg"
WIDTH, HEIGHT = 160, 120
HORIZON = 70  # where the back wall meets the floor
JPEG_QUALITY = 90


def draw_scene() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    for y in range(HEIGHT):  # wall above the horizon, floor below, lighter as it comes closer
        shade = 150 + y // 2 if y < HORIZON else 90 + (y - HORIZON) * 2
        draw.line([(0, y), (WIDTH, y)], fill=(shade, shade - 20, shade - 40))
    draw.rectangle([20, 20, 60, 50], fill=(120, 170, 220))  # window on the back wall
    draw.rectangle([70, 78, 150, 90], fill=(110, 70, 40))  # desk top
    draw.rectangle([76, 90, 84, 118], fill=(80, 50, 30))  # desk legs
    draw.rectangle([136, 90, 144, 118], fill=(80, 50, 30))
    draw.polygon([(100, 50), (112, 50), (118, 64), (94, 64)], fill=(240, 220, 120))  # lamp
    draw.rectangle([104, 64, 108, 78], fill=(60, 60, 60))
    draw.ellipse([18, 88, 48, 118], fill=(200, 60, 60))  # a ball on the floor, nearest
    return image


def main() -> None:
    draw_scene().save(OUTPUT, format="JPEG", quality=JPEG_QUALITY)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
