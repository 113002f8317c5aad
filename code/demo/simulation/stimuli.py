"""Procedural stimuli: categories are compositions of shape, colour, texture and background; images are samples.

A category fixes one value of each attribute (so two categories share parts, as ImageNet classes do)
plus its own typical object size, position offset, pose and texture frequency. An image of the
category jitters those (position, scale, rotation, colour, texture phase, background details).
Rendering is vectorised over a batch of images (signed distance functions with anti-aliased edges).
Coordinates: x to the right, y downwards, both in [-1, 1] across the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.simulation.numerics import exact_matmul

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross", "star", "bar")
COLOUR_NAMES = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "white", "black")
COLOURS = np.array(
    [
        [0.85, 0.15, 0.12],
        [0.95, 0.55, 0.10],
        [0.95, 0.85, 0.15],
        [0.20, 0.70, 0.20],
        [0.10, 0.65, 0.65],
        [0.15, 0.30, 0.85],
        [0.55, 0.20, 0.75],
        [0.95, 0.45, 0.70],
        [0.92, 0.92, 0.92],
        [0.08, 0.08, 0.08],
    ],
    dtype=np.float32,
)
TEXTURES = ("plain", "striped", "checked", "dotted", "ringed")
BG_TYPES = ("flat", "gradient", "horizon", "clouds")
TINT_NAMES = ("sky", "grass", "sand", "stone", "night", "rose")
TINTS = np.array(
    [
        [0.55, 0.75, 0.95],
        [0.35, 0.60, 0.30],
        [0.85, 0.75, 0.55],
        [0.55, 0.55, 0.55],
        [0.12, 0.12, 0.25],
        [0.85, 0.60, 0.65],
    ],
    dtype=np.float32,
)
EARTH = np.array([0.45, 0.35, 0.20], dtype=np.float32)
ATTRIBUTES = ("shape", "colour", "texture", "bg_type", "bg_tint")
ATTRIBUTE_SIZES = (len(SHAPES), len(COLOURS), len(TEXTURES), len(BG_TYPES), len(TINTS))
LAYOUTS = ("object", "objects", "scene")  # one centred object (ImageNet/GOD), 2-3 objects (COCO), a scene
MAX_OBJECTS = 3
CLOUD_GRID = 5


@dataclass(frozen=True)
class Categories:
    """K categories: attribute indices (K, 5) in ATTRIBUTES order and the category's typical geometry."""

    attrs: np.ndarray  # (K, 5) int
    layout: np.ndarray  # (K,) index into LAYOUTS
    radius: np.ndarray  # (K,) typical object radius (image half-widths)
    offset: np.ndarray  # (K, 2) typical object position
    rotation: np.ndarray  # (K,) typical pose (radians)
    tex_cycles: np.ndarray  # (K,) texture cycles per object radius
    tex_angle: np.ndarray  # (K,) texture orientation

    def __len__(self) -> int:
        return len(self.attrs)

    def names(self) -> list[str]:
        """Readable names, e.g. 'red striped star on sky horizon'."""
        return [
            f"{COLOUR_NAMES[c]} {TEXTURES[t]} {SHAPES[s]} on {TINT_NAMES[n]} {BG_TYPES[b]}"
            for s, c, t, b, n in self.attrs
        ]


def sample_categories(rng: np.random.Generator, n: int, layout: np.ndarray | int = 0) -> Categories:
    """n categories with distinct attribute combinations; `layout` per category (or one for all)."""
    n_combos = int(np.prod(ATTRIBUTE_SIZES))
    if n > n_combos:
        raise ValueError(f"at most {n_combos} distinct categories, asked for {n}")
    attrs = np.stack(np.unravel_index(rng.choice(n_combos, n, replace=False), ATTRIBUTE_SIZES), axis=1)
    layout = np.broadcast_to(np.asarray(layout, dtype=np.int64), (n,)).copy()
    # an ImageNet-like object spans about half the picture's width (13-19 pixels at the demo's 32 px)
    lo, hi = np.array([0.42, 0.16, 0.12])[layout], np.array([0.60, 0.26, 0.20])[layout]
    return Categories(
        attrs=attrs.astype(np.int64),
        layout=layout,
        radius=rng.uniform(lo, hi),
        offset=rng.uniform(-0.08, 0.08, (n, 2)),
        rotation=rng.uniform(-0.4, 0.4, n),
        tex_cycles=rng.uniform(1.4, 2.6, n),
        tex_angle=rng.uniform(0, np.pi, n),
    )


@dataclass(frozen=True)
class ImageParams:
    """Per-image draws (N rows): which category, where its objects are, and the jittered appearance."""

    category: np.ndarray  # (N,)
    centre: np.ndarray  # (N, MAX_OBJECTS, 2)
    radius: np.ndarray  # (N, MAX_OBJECTS)
    active: np.ndarray  # (N, MAX_OBJECTS) bool
    rotation: np.ndarray  # (N, MAX_OBJECTS)
    fg: np.ndarray  # (N, 3) object colour
    tint: np.ndarray  # (N, 3) background colour
    tex_phase: np.ndarray  # (N, 2)
    horizon: np.ndarray  # (N,)
    clouds: np.ndarray  # (N, CLOUD_GRID, CLOUD_GRID) in [0, 1]


def sample_images(rng: np.random.Generator, cats: Categories, category: np.ndarray) -> ImageParams:
    """Draw one image's parameters per entry of `category` (N,) (indices into `cats`)."""
    category = np.asarray(category, dtype=np.int64)
    n, m = len(category), MAX_OBJECTS
    layout = cats.layout[category]
    n_obj = np.where(layout == 1, rng.integers(2, m + 1, n), 1)
    centre = np.where(  # object-centred images jitter around the category's offset; scenes put it low
        (layout == 0)[:, None, None],
        cats.offset[category][:, None, :] + rng.uniform(-0.12, 0.12, (n, m, 2)),
        rng.uniform(-0.55, 0.55, (n, m, 2)),
    )
    centre[layout == 2, :, 1] = rng.uniform(0.15, 0.55, (int((layout == 2).sum()), m))
    fg = COLOURS[cats.attrs[category, 1]] * np.exp(rng.normal(0, 0.08, (n, 1))) + rng.normal(0, 0.04, (n, 3))
    return ImageParams(
        category=category,
        centre=centre,
        radius=cats.radius[category, None] * np.exp(rng.normal(0, 0.1, (n, m))),
        active=np.arange(m)[None, :] < n_obj[:, None],
        rotation=cats.rotation[category, None] + rng.normal(0, 0.15, (n, m)),
        fg=np.clip(fg, 0, 1),
        tint=np.clip(TINTS[cats.attrs[category, 4]] + rng.normal(0, 0.04, (n, 3)), 0, 1),
        tex_phase=rng.uniform(0, 2 * np.pi, (n, 2)),
        horizon=rng.uniform(-0.3, 0.3, n),
        clouds=rng.uniform(0, 1, (n, CLOUD_GRID, CLOUD_GRID)),
    )


def _sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, in object radii) of a unit-size shape; negative inside."""
    au, av, r = np.abs(u), np.abs(v), np.hypot(u, v)
    if SHAPES[shape] == "disc":
        return r - 1.0
    if SHAPES[shape] == "square":
        return np.maximum(au, av) - 0.85
    if SHAPES[shape] == "triangle":  # apex up (y points down), centred on its centroid
        return np.maximum(v, 0.866 * au - 0.5 * v) - 0.55
    if SHAPES[shape] == "diamond":
        return (au + av - 1.2) * 0.7071
    if SHAPES[shape] == "ring":
        return np.abs(r - 0.72) - 0.28
    if SHAPES[shape] == "cross":
        return np.minimum(np.maximum(au - 0.33, av - 1.0), np.maximum(au - 1.0, av - 0.33))
    if SHAPES[shape] == "star":
        return r - (0.62 + 0.38 * np.cos(5 * np.arctan2(v, u) + np.pi / 2))
    return (np.hypot(u / 1.15, v / 0.45) - 1.0) * 0.45  # bar


def _texture(
    texture: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray, angle: np.ndarray, phase: np.ndarray
) -> np.ndarray:
    """Texture pattern in [0, 1] over object coordinates; freq, angle (k, 1, 1), phase (k, 1, 1, 2)."""
    p = np.cos(angle) * u + np.sin(angle) * v
    q = np.cos(angle) * v - np.sin(angle) * u
    name = TEXTURES[texture]
    if name == "plain":
        return np.zeros_like(u)
    if name == "striped":
        return 0.5 + 0.5 * np.tanh(4 * np.sin(freq * p + phase[..., 0]))
    if name == "checked":
        return 0.5 + 0.5 * np.tanh(6 * np.sin(freq * p + phase[..., 0]) * np.sin(freq * q + phase[..., 1]))
    if name == "dotted":
        dp = np.mod(freq * p / (2 * np.pi) + phase[..., 0] / (2 * np.pi), 1.0) - 0.5
        dq = np.mod(freq * q / (2 * np.pi) + phase[..., 1] / (2 * np.pi), 1.0) - 0.5
        return 0.5 + 0.5 * np.tanh((0.3 - np.hypot(dp, dq)) / 0.06)
    return 0.5 + 0.5 * np.tanh(4 * np.sin(freq * np.hypot(u, v) + phase[..., 0]))  # ringed


def _background(bg_type: np.ndarray, p: ImageParams, sl: slice, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Background images (b, H, W, 3) of the images in `sl`; x (1, 1, W), y (1, H, 1)."""
    tint = p.tint[sl][:, None, None, :].astype(np.float32)
    size = x.shape[-1]
    out = np.empty((len(tint), size, size, 3), dtype=np.float32)
    for t, name in enumerate(BG_TYPES):
        i = np.flatnonzero(bg_type == t)
        if not len(i):
            continue
        if name == "flat":
            out[i] = tint[i] * (1.0 - 0.12 * (x**2 + y**2))[..., None]
        elif name == "gradient":
            out[i] = tint[i] * (1.1 - 0.3 * (y + 1.0))[..., None]
        elif name == "horizon":  # light sky above, darker earth-tinted ground below
            s = 0.5 + 0.5 * np.tanh((y - p.horizon[sl][i, None, None].astype(np.float32)) / 0.03)
            out[i] = tint[i] * 1.1 * (1 - s[..., None]) + (0.5 * tint[i] + 0.5 * EARTH) * 0.8 * s[..., None]
        else:  # clouds: a smooth random field (Gaussian interpolation of a coarse grid)
            pos = (np.arange(size) + 0.5) / size * (CLOUD_GRID - 1)
            up = np.exp(-0.5 * ((pos[:, None] - np.arange(CLOUD_GRID)[None, :]) / 0.6) ** 2)  # (H, G)
            up /= up.sum(1, keepdims=True)
            field = exact_matmul(exact_matmul(up, p.clouds[sl][i]), up.T).astype(np.float32)  # (k, H, W)
            out[i] = tint[i] * (0.65 + 0.7 * field)[..., None]
    return out


def render(cats: Categories, p: ImageParams, size: int, batch: int = 32) -> np.ndarray:
    """Draw the images described by `p`: uint8 (N, size, size, 3)."""
    n = len(p.category)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    c = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    attrs = cats.attrs[p.category]
    f32 = np.float32
    for s in range(0, n, batch):
        sl = slice(s, s + batch)
        img = _background(attrs[sl, 3], p, sl, c[None, None, :], c[None, :, None])  # (b, H, W, 3)
        fg = p.fg[sl].astype(f32)
        lum = (fg * np.array([0.3, 0.59, 0.11], dtype=f32)).sum(-1)
        second = np.where(lum[:, None] > 0.45, 0.3 * fg, 0.35 * fg + 0.65)  # the texture's contrasting colour
        for m in range(MAX_OBJECTS):
            act = np.flatnonzero(p.active[sl, m])
            if not len(act):
                continue
            j = act + s
            rad = p.radius[j, m].astype(f32)
            # work in a square window around each object (shapes reach at most 1.2 radii from the centre)
            win = min(size, int(np.ceil(2.5 * rad.max() * size / 2)) + 4)
            x0, y0 = (
                np.clip(np.round((p.centre[j, m, a] + 1) * size / 2 - win / 2), 0, size - win).astype(int)
                for a in (0, 1)
            )
            xs, ys = x0[:, None] + np.arange(win), y0[:, None] + np.arange(win)  # (k, win)
            dx = c[xs][:, None, :] - p.centre[j, m, 0].astype(f32)[:, None, None]  # (k, 1, win)
            dy = c[ys][:, :, None] - p.centre[j, m, 1].astype(f32)[:, None, None]  # (k, win, 1)
            rot = p.rotation[j, m].astype(f32)[:, None, None]
            u = (np.cos(rot) * dx + np.sin(rot) * dy) / rad[:, None, None]  # (k, win, win)
            v = (np.cos(rot) * dy - np.sin(rot) * dx) / rad[:, None, None]
            sdf, tex = np.empty_like(u), np.empty_like(u)
            cat = p.category[j]
            for k in np.unique(attrs[j, 0]):
                i = np.flatnonzero(attrs[j, 0] == k)
                sdf[i] = _sdf(int(k), u[i], v[i])
            for k in np.unique(attrs[j, 2]):
                i = np.flatnonzero(attrs[j, 2] == k)
                tex[i] = _texture(
                    int(k),
                    u[i],
                    v[i],
                    (2 * np.pi * cats.tex_cycles[cat[i]]).astype(f32)[:, None, None],
                    cats.tex_angle[cat[i]].astype(f32)[:, None, None],
                    p.tex_phase[j[i]].astype(f32)[:, None, None, :],
                )
            alpha = np.clip(0.5 - sdf * (rad[:, None, None] * size / 2), 0.0, 1.0)[..., None]  # 1-pixel soft edge
            shade = (1.06 - 0.06 * np.clip(v, -1, 1))[..., None]  # a little light from above
            tex = 0.55 * tex[..., None]
            colour = (fg[act, None, None, :] * (1 - tex) + second[act, None, None, :] * tex) * shade
            index = (act[:, None, None], ys[:, :, None], xs[:, None, :])
            img[index] = img[index] * (1 - alpha) + colour * alpha
        out[sl] = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return out
