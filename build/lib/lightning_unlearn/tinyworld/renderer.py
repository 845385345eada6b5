"""Procedural renderer of the tiny world: one style (palette + texture) x one object (shape).

Every image is a pure function of ``(style, object, seed)``: the seed draws the shape's pose
(scale, rotation, offset) and the texture's phase, so a dataset or an evaluation set is
reproducible bit for bit. Vectorised over a batch with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

IMAGE_SIZE = 32


@dataclass(frozen=True)
class StyleLook:
    """How one style paints: a texture value t in [0, 1] mixes two colours in each region."""

    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    foreground: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture: str
    outline: tuple[int, int, int] | None = None


# Every style gets a background colour pair no other style shares, strong contrast between
# figure and ground, and no pale near-white ground (a prototype could not learn a pale style).
STYLE_LOOKS: dict[str, StyleLook] = {
    "Van Gogh": StyleLook(((20, 40, 120), (70, 110, 220)), ((250, 215, 40), (220, 140, 20)), "swirl"),
    "Monet": StyleLook(((110, 165, 100), (175, 205, 140)), ((235, 115, 170), (190, 140, 225)), "blobs"),
    "Pop Art": StyleLook(((255, 225, 0), (225, 30, 30)), ((0, 170, 235), (0, 140, 200)), "dots", (0, 0, 0)),
    "Ukiyo-e": StyleLook(((240, 225, 185), (30, 60, 115)), ((205, 50, 40), (140, 25, 25)), "waves"),
    "Cubism": StyleLook(((160, 115, 60), (85, 65, 45)), ((240, 220, 165), (160, 170, 180)), "facets"),
    "Picasso": StyleLook(((25, 125, 135), (15, 75, 85)), ((245, 140, 60), (215, 85, 35)), "diagonal"),
    "Abstractionism": StyleLook(((220, 30, 30), (30, 40, 200)), ((20, 20, 20), (60, 60, 60)), "blocks"),
    "Byzantine": StyleLook(((125, 15, 30), (205, 165, 40)), ((225, 185, 60), (165, 120, 30)), "mosaic"),
    "Cartoon": StyleLook(((120, 200, 250), (110, 190, 245)), ((60, 205, 60), (40, 170, 40)), "flat", (0, 0, 0)),
    "Neon Lines": StyleLook(((10, 10, 18), (255, 20, 200)), ((40, 255, 120), (10, 60, 30)), "lines"),
    "On Fire": StyleLook(((200, 25, 0), (255, 185, 0)), ((40, 20, 10), (110, 40, 10)), "flames"),
    "Winter": StyleLook(((95, 145, 205), (255, 255, 255)), ((230, 240, 255), (165, 205, 240)), "snow"),
    "Pointillism": StyleLook(((235, 130, 55), (55, 135, 205)), ((105, 40, 135), (250, 245, 100)), "pointil"),
    "Art Deco": StyleLook(((30, 45, 35), (215, 170, 60)), ((235, 225, 205), (205, 170, 90)), "chevron"),
    "Baroque": StyleLook(((65, 30, 20), (125, 65, 30)), ((205, 35, 60), (235, 190, 80)), "vignette"),
    "Impressionism": StyleLook(((250, 215, 110), (120, 180, 235)), ((200, 55, 120), (250, 120, 80)), "dabs"),
}
assert set(STYLE_LOOKS) == set(STYLES), "every style needs a look"


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shape [1, H, W] each (x to the right, y down)."""
    c = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    return x[None], y[None]


def _texture(name: str, x: np.ndarray, y: np.ndarray, phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture value in [0, 1] for a batch; ``phase`` is [B, 1, 1] in [0, 1)."""
    b = phase.shape[0]
    two_pi = 2.0 * np.pi
    p = phase * two_pi
    if name == "swirl":
        r = np.sqrt(x**2 + y**2)
        th = np.arctan2(y, x)
        return 0.5 + 0.5 * np.sin(9.0 * r + 3.0 * th + p)
    if name == "blobs":
        return 0.5 + 0.25 * (np.sin(3.0 * x + p) * np.cos(2.5 * y - p) + np.sin(4.0 * (x + y) + 2 * p))
    if name == "dots":
        # 4-pixel Ben-Day dot lattice (one pixel is 1/16 of a unit).
        gx = (x + 0.25 * phase) % 0.25 - 0.125
        gy = (y + 0.25 * phase) % 0.25 - 0.125
        return ((gx**2 + gy**2) < 0.005).astype(np.float32)
    if name == "waves":
        return (np.sin(two_pi * (3.5 * y + 0.25 * np.sin(two_pi * 1.5 * x + p))) > 0.3).astype(np.float32)
    if name == "facets":
        angles = rng.uniform(0, np.pi, size=(b, 3, 1, 1)).astype(np.float32)
        offs = rng.uniform(-0.5, 0.5, size=(b, 3, 1, 1)).astype(np.float32)
        s = (np.cos(angles) * x[:, None] + np.sin(angles) * y[:, None] > offs).astype(np.float32)
        return s.mean(axis=1)
    if name == "diagonal":
        return (np.sin(two_pi * 2.5 * (x + y) + p) > 0.0).astype(np.float32)
    if name == "blocks":
        cx = rng.uniform(-0.4, 0.4, size=(b, 1, 1)).astype(np.float32)
        cy = rng.uniform(-0.4, 0.4, size=(b, 1, 1)).astype(np.float32)
        return ((x > cx) ^ (y > cy)).astype(np.float32)
    if name == "mosaic":
        # 6-pixel tiles with one-pixel gold grout.
        gx = (x + 0.375 * phase) % 0.375
        gy = (y + 0.375 * phase) % 0.375
        return ((gx < 0.07) | (gy < 0.07)).astype(np.float32)
    if name == "flat":
        return np.zeros_like(x + phase)
    if name == "lines":
        return (np.abs(np.sin(two_pi * 2.0 * (x - 0.5 * y) + p)) > 0.9).astype(np.float32)
    if name == "flames":
        return np.clip((y + 1.0) / 2.0 + 0.15 * np.sin(two_pi * 2.0 * x + p), 0.0, 1.0)
    if name == "snow":
        return (rng.random(size=(b, IMAGE_SIZE, IMAGE_SIZE)) < 0.12).astype(np.float32)
    if name == "pointil":
        return (rng.random(size=(b, IMAGE_SIZE, IMAGE_SIZE)) < 0.25).astype(np.float32)
    if name == "chevron":
        return (np.sin(two_pi * (2.5 * y + 1.5 * np.abs(x)) + p) > 0.2).astype(np.float32)
    if name == "vignette":
        return np.clip(1.0 - (x**2 + y**2) * 0.6 + 0.0 * phase, 0.0, 1.0)
    if name == "dabs":
        return (np.sin(two_pi * 4.0 * y + p) * np.sin(two_pi * 1.0 * x + 3 * p) > 0.0).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Filled shape in shape coordinates (roughly [-1, 1], y down); boolean [B, H, W]."""
    r = np.sqrt(u**2 + v**2)
    if name == "circle":
        return r < 0.75
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.65
    if name == "triangle":
        return (v < 0.6) & (v > -0.8 + 1.55 * np.abs(u))
    if name == "star":
        th = np.arctan2(v, u) + np.pi / 2
        return r < 0.38 + 0.5 * (0.5 + 0.5 * np.cos(5.0 * th)) ** 2.5
    if name == "heart":
        hx, hy = u * 1.15, -(v * 1.15 + 0.1)
        return (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 < 0.0
    if name == "cross":
        return ((np.abs(u) < 0.24) & (np.abs(v) < 0.8)) | ((np.abs(v) < 0.24) & (np.abs(u) < 0.8))
    if name == "ring":
        return (r < 0.8) & (r > 0.45)
    if name == "diamond":
        return np.abs(u) / 0.6 + np.abs(v) / 0.85 < 1.0
    if name == "moon":
        return (r < 0.78) & (np.sqrt((u - 0.38) ** 2 + (v + 0.12) ** 2) > 0.62)
    if name == "arrow":
        shaft = (np.abs(v) < 0.17) & (u > -0.85) & (u < 0.15)
        head = (u >= 0.15) & (u < 0.85) & (np.abs(v) < (0.85 - u) * 0.95)
        return shaft | head
    if name == "house":
        body = (np.abs(u) < 0.55) & (v > -0.05) & (v < 0.75)
        roof = (v <= -0.05) & (v > -0.8) & (np.abs(u) < (v + 0.8) * 0.95)
        return body | roof
    if name == "tree":
        trunk = (np.abs(u) < 0.12) & (v > 0.45) & (v < 0.85)
        tier1 = (v <= 0.45) & (v > -0.25) & (np.abs(u) < (v + 0.25) * 0.95)
        tier2 = (v <= 0.05) & (v > -0.85) & (np.abs(u) < (v + 0.85) * 0.7)
        return trunk | tier1 | tier2
    raise ValueError(f"unknown shape {name!r}")


def render_batch(styles: np.ndarray | list[int], objects: np.ndarray | list[int], seed: int) -> np.ndarray:
    """Render images for index arrays of styles and objects.

    Args:
        styles: style indices into ``STYLES``, shape [B].
        objects: object indices into ``OBJECTS``, shape [B].
        seed: the batch's seed; the same arguments always give the same pixels.

    Returns:
        uint8 array [B, 32, 32, 3].
    """
    styles = np.asarray(styles, dtype=np.int64)
    objects = np.asarray(objects, dtype=np.int64)
    if styles.shape != objects.shape or styles.ndim != 1:
        raise ValueError(f"styles and objects must be 1-D of one length, got {styles.shape} and {objects.shape}")
    rng = np.random.default_rng(seed)
    b = styles.shape[0]
    x, y = _grid(IMAGE_SIZE)
    # Pose: the shape fills most of the frame so it stays legible at 32x32.
    scale = rng.uniform(0.78, 0.98, size=(b, 1, 1)).astype(np.float32)
    angle = rng.uniform(-0.2, 0.2, size=(b, 1, 1)).astype(np.float32)
    dx = rng.uniform(-0.1, 0.1, size=(b, 1, 1)).astype(np.float32)
    dy = rng.uniform(-0.1, 0.1, size=(b, 1, 1)).astype(np.float32)
    phase = rng.random(size=(b, 1, 1)).astype(np.float32)
    xs, ys = (x - dx) / scale, (y - dy) / scale
    u = np.cos(angle) * xs + np.sin(angle) * ys
    v = -np.sin(angle) * xs + np.cos(angle) * ys

    out = np.empty((b, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    for s_idx in np.unique(styles):
        look = STYLE_LOOKS[STYLES[s_idx]]
        sel = np.nonzero(styles == s_idx)[0]
        t = np.broadcast_to(_texture(look.texture, x, y, phase[sel], rng), (len(sel), IMAGE_SIZE, IMAGE_SIZE))
        t = t[..., None]
        bg0, bg1 = (np.asarray(c, dtype=np.float32) for c in look.background)
        fg0, fg1 = (np.asarray(c, dtype=np.float32) for c in look.foreground)
        bg = bg0 * (1.0 - t) + bg1 * t
        fg = fg0 * (1.0 - t) + fg1 * t
        mask = np.zeros((len(sel), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        edge = np.zeros_like(mask)
        for o_idx in np.unique(objects[sel]):
            sub = np.nonzero(objects[sel] == o_idx)[0]
            m = _shape_mask(OBJECTS[o_idx], u[sel][sub], v[sel][sub])
            mask[sub] = m
            if look.outline is not None:
                # Outline: mask dilated by one pixel, minus the mask itself.
                d = m.copy()
                d[:, 1:] |= m[:, :-1]
                d[:, :-1] |= m[:, 1:]
                d[:, :, 1:] |= m[:, :, :-1]
                d[:, :, :-1] |= m[:, :, 1:]
                edge[sub] = d & ~m
        img = np.where(mask[..., None], fg, bg)
        if look.outline is not None:
            img = np.where(edge[..., None], np.asarray(look.outline, dtype=np.float32), img)
        out[sel] = img
    out += rng.normal(0.0, 4.0, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(style: str, obj: str, seed: int) -> np.ndarray:
    """Render one image of ``obj`` in ``style``; uint8 [32, 32, 3]."""
    return render_batch([STYLES.index(style)], [OBJECTS.index(obj)], seed)[0]
