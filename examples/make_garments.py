"""Draw the example garment images (examples/*.png). Released under CC0 1.0 (public domain).

    python examples/make_garments.py

Flat, hand-constructed drawings: enough to try the command line and the service, nothing more.
The top is saved with a transparent background on purpose: the engine composites transparent
garment backgrounds over white, as shops' cut-out product photos need.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
W, H = 384, 512


def _stripes(size, colour_a, colour_b, period=24, horizontal=True) -> Image.Image:
    img = Image.new("RGB", size, colour_a)
    d = ImageDraw.Draw(img)
    for i in range(0, size[1] if horizontal else size[0], period):
        box = (0, i, size[0], i + period // 2) if horizontal else (i, 0, i + period // 2, size[1])
        d.rectangle(box, fill=colour_b)
    return img


def _shape(polygon, fill: Image.Image, background=None) -> Image.Image:
    """The polygon filled with the `fill` texture; transparent (or `background`) elsewhere."""
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    if background is None:
        out = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        out.paste(fill.convert("RGBA"), (0, 0), mask)
        return out
    out = Image.new("RGB", (W, H), background)
    out.paste(fill, (0, 0), mask)
    return out


def upper() -> Image.Image:
    tee = [(112, 60), (160, 48), (192, 72), (224, 48), (272, 60), (352, 132), (312, 184), (280, 156),
           (280, 460), (104, 460), (104, 156), (72, 184), (32, 132)]
    return _shape(tee, _stripes((W, H), (200, 40, 48), (245, 235, 225)))


def lower() -> Image.Image:
    trousers = [(112, 40), (272, 40), (300, 480), (222, 480), (192, 170), (162, 480), (84, 480)]
    return _shape(trousers, Image.new("RGB", (W, H), (40, 60, 120)), background=(255, 255, 255))


def dress() -> Image.Image:
    shape = [(150, 30), (234, 30), (250, 150), (230, 200), (330, 490), (54, 490), (154, 200), (134, 150)]
    return _shape(shape, _stripes((W, H), (30, 120, 70), (240, 210, 60), period=32, horizontal=False),
                  background=(255, 255, 255))


def shoe() -> Image.Image:
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.polygon([(60, 300), (150, 250), (200, 300), (330, 330), (340, 380), (60, 380)], fill=(90, 50, 30))
    d.rectangle((60, 380, 340, 400), fill=(230, 230, 230))
    return img


def bag() -> Image.Image:
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.arc((120, 110, 264, 280), start=180, end=360, fill=(60, 40, 30), width=14)
    d.rounded_rectangle((80, 190, 304, 420), radius=24, fill=(170, 110, 60))
    d.rectangle((172, 230, 212, 250), fill=(220, 200, 120))
    return img


def main() -> None:
    for name, draw in [("upper", upper), ("lower", lower), ("dress", dress), ("shoe", shoe), ("bag", bag)]:
        draw().save(HERE / f"{name}.png", optimize=True)
        print(HERE / f"{name}.png")


if __name__ == "__main__":
    main()
