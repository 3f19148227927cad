"""Generic pixel-drawing helpers of PadChest-Synth: soft shapes, curves, splatting, mask pasting, smooth noise.

These are pure numpy/scipy/Pillow functions on float32 layers in normalised image coordinates (``x`` grows
to the image right, ``y`` downwards, both in ``[0, 1]`` whatever the pixel size); none of them knows about
lungs, sides or views. :mod:`trcgl.data.synth.anatomy` draws the normal chest with them and
:mod:`trcgl.data.synth.findings` draws the findings with them; :mod:`trcgl.data.synth.atlas` (the lung-mask
atlas) needs none of them. This module imports nothing from the other two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.interpolate import CubicSpline


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 ramp of t over [0, 1] (clipped outside): 3t^2 - 2t^3, flat at both ends.

    Args:
        t: array of any shape (or a scalar).

    Returns:
        Array of t's shape, in [0, 1].
    """
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_inside(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft inside test: 1 where ``signed`` > width / 2, 0 where < -width / 2, a smoothstep in between.

    Args:
        signed: signed distance-like values of any shape, positive inside.
        width: width of the transition, in the units of ``signed``.

    Returns:
        Array of ``signed``'s shape, in [0, 1].
    """
    return smoothstep(signed / max(width, 1e-6) + 0.5)


@dataclass(frozen=True)
class Window:
    """A rectangular part of the image with its own coordinate vectors.

    Attributes:
        rows: row slice into an (S, S) layer.
        cols: column slice.
        x: (1, w) float32 normalised x of the window's pixel centres.
        y: (h, 1) float32 normalised y.
    """

    rows: slice
    cols: slice
    x: np.ndarray
    y: np.ndarray


def make_window(size: int, x0: float, x1: float, y0: float, y1: float) -> Window | None:
    """Window covering the normalised box [x0, x1] x [y0, y1] of an (S, S) image, clipped to the image.

    Args:
        size: S, pixels per side.
        x0, x1, y0, y1: normalised box; pixels whose cells the box touches are included.

    Returns:
        The window (x (1, w) and y (h, 1) float32 pixel centres), or None when nothing of the box is inside.
    """
    c0, c1 = max(0, math.floor(x0 * size)), min(size, math.ceil(x1 * size))
    r0, r1 = max(0, math.floor(y0 * size)), min(size, math.ceil(y1 * size))
    if c1 <= c0 or r1 <= r0:
        return None
    x = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / size)[None, :]
    y = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / size)[:, None]
    return Window(slice(r0, r1), slice(c0, c1), x, y)


def blob(
    win: Window,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    *,
    angle: float = 0.0,
    softness: float = 0.15,
    lobes: np.ndarray | None = None,
    power: float = 2.0,
) -> np.ndarray:
    """Filled (lobulated) ellipse with a soft edge, evaluated on a window.

    Args:
        win: where to evaluate.
        cx, cy: centre (normalised).
        rx, ry: semi-axes (normalised).
        angle: rotation of the x semi-axis, radians (image coordinates, clockwise on screen).
        softness: edge width as a fraction of the radius (0.05 sharp, 0.5 fuzzy).
        lobes: optional (K, 3) rows (harmonic k, amplitude, phase) modulating the radius.
        power: superellipse exponent (2 ellipse, 4+ rounded rectangle).

    Returns:
        (h, w) float32 in [0, 1].
    """
    dx, dy = win.x - cx, win.y - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / rx
    v = (dy * c - dx * s) / ry
    rho = np.sqrt(u * u + v * v) if power == 2.0 else (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
    radius: np.ndarray | float = 1.0
    if lobes is not None and len(lobes):
        theta = np.arctan2(v, u)
        radius = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in lobes)
    return soft_inside(radius - rho, softness).astype(np.float32)


def random_lobes(rng: np.random.Generator, amplitude: float, harmonics: int = 4) -> np.ndarray:
    """(harmonics, 3) lobulation table for :func:`blob`: harmonics 2.., amplitudes decaying, random phases."""
    ks = np.arange(2, 2 + harmonics, dtype=np.float64)
    amps = amplitude * rng.uniform(0.3, 1.0, harmonics) / (ks - 1.0)
    return np.stack([ks, amps, rng.uniform(0, 2 * math.pi, harmonics)], axis=1)


def splat(layer: np.ndarray, px: np.ndarray, py: np.ndarray, weights: np.ndarray | float) -> None:
    """Add point weights into ``layer`` with bilinear splatting (in place).

    Args:
        layer: (S, S) float32 layer.
        px, py: (M,) pixel coordinates (pixel centres at integers).
        weights: (M,) or scalar weight per point.
    """
    height, width = layer.shape
    w = np.broadcast_to(np.asarray(weights, np.float64), np.shape(px))
    keep = (px > -1) & (px < width) & (py > -1) & (py < height)
    if not keep.all():
        px, py, w = px[keep], py[keep], w[keep]
    if px.size == 0:
        return
    x0f, y0f = np.floor(px), np.floor(py)
    fx, fy = px - x0f, py - y0f
    x0, y0 = x0f.astype(np.intp), y0f.astype(np.intp)
    c0, r0 = int(x0.min()), int(y0.min())
    cols, rows = int(x0.max()) + 2 - c0, int(y0.max()) + 2 - r0  # local accumulator with a 1-pixel margin
    idx = (y0 - r0) * cols + (x0 - c0)
    n = rows * cols
    right = w * fx
    left = w - right
    acc = np.bincount(idx, left * (1 - fy), minlength=n)
    acc += np.bincount(idx + 1, right * (1 - fy), minlength=n)
    acc += np.bincount(idx + cols, left * fy, minlength=n)
    acc += np.bincount(idx + cols + 1, right * fy, minlength=n)
    acc = acc.reshape(rows, cols)
    rr0, rr1 = max(r0, 0), min(r0 + rows, height)
    cc0, cc1 = max(c0, 0), min(c0 + cols, width)
    layer[rr0:rr1, cc0:cc1] += acc[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0].astype(np.float32)


def bezier(control: np.ndarray, n: int = 64) -> np.ndarray:
    """Points on the Bezier curve of the given control points.

    Args:
        control: (K, 2) control points (x, y).
        n: number of output points.

    Returns:
        (n, 2) float64 points.
    """
    control = np.asarray(control, np.float64)
    k = len(control) - 1
    t = np.linspace(0.0, 1.0, n)[:, None]
    coeffs = np.array([math.comb(k, i) for i in range(k + 1)], np.float64)[None, :]
    i = np.arange(k + 1)[None, :]
    basis = coeffs * t**i * (1 - t) ** (k - i)  # (n, K)
    return basis @ control


def spline(points: np.ndarray, n: int = 96) -> np.ndarray:
    """Smooth curve through the given points (cubic spline over chord length).

    Args:
        points: (K, 2) points the curve must pass through, K >= 2.
        n: number of output points.

    Returns:
        (n, 2) float64 points.
    """
    points = np.asarray(points, np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
    keep = np.concatenate([[True], np.diff(chord) > 1e-9])
    points, chord = points[keep], chord[keep]
    if len(points) < 3:
        t = np.linspace(0.0, 1.0, n)[:, None]
        return points[0] + t * (points[-1] - points[0])
    curve = CubicSpline(chord, points, axis=0, bc_type="natural")
    return curve(np.linspace(0.0, chord[-1], n))


def draw_curve(
    layer: np.ndarray,
    points: np.ndarray,
    width: float,
    value: float | Callable[[np.ndarray], np.ndarray],
    *,
    profile: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Draw an anti-aliased polyline of given width into ``layer`` (in place, additive).

    The line is sampled every half pixel along its length and at sub-pixel steps across it; normals are
    smoothed over about one line width so corners do not fan out, and each sample is weighted by the spacing
    of its own offset curve so curved thick lines stay evenly filled.

    Args:
        layer: (S, S) float32 layer.
        points: (M, 2) normalised (x, y) vertices (dense enough to look smooth, e.g. from :func:`bezier`).
        width: line width (normalised). Lines under one pixel are drawn one pixel wide and proportionally faint.
        value: peak value added, or a function of the normalised arc length t (n,) -> (n,) (dashes, tapers).
        profile: optional function of the across-line position in [-1, 1] -> weight (tube walls etc.).
    """
    size = layer.shape[0]
    p = np.asarray(points, np.float64) * size - 0.5
    seg = np.hypot(*np.diff(p, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return
    step = 0.5
    n = max(3, int(cum[-1] / step) + 1)
    t = np.linspace(0.0, cum[-1], n)
    xs = np.interp(t, cum, p[:, 0])
    ys = np.interp(t, cum, p[:, 1])
    width_px = width * size
    half = max(1, int(round(width_px / step)))  # smooth the tangent over about one line width
    gx = xs[np.minimum(np.arange(n) + half, n - 1)] - xs[np.maximum(np.arange(n) - half, 0)]
    gy = ys[np.minimum(np.arange(n) + half, n - 1)] - ys[np.maximum(np.arange(n) - half, 0)]
    norm = np.maximum(np.hypot(gx, gy), 1e-9)
    nx, ny = -gy / norm, gx / norm
    along = value(t / cum[-1]) if callable(value) else np.full(n, float(value))
    k = max(1, math.ceil(width_px / 0.6))
    across = width_px / k if k > 1 else min(width_px, 1.0)
    offsets = ((np.arange(k) + 0.5) / k - 0.5) * width_px if k > 1 else np.zeros(1)
    weights = profile(offsets / max(width_px / 2, 1e-9)) if profile is not None else np.ones(k)
    px = xs[None, :] + offsets[:, None] * nx[None, :]  # (k, n)
    py = ys[None, :] + offsets[:, None] * ny[None, :]
    spacing = np.hypot(np.gradient(px, axis=1), np.gradient(py, axis=1))
    spacing = np.clip(spacing, 0.0, 2.0 * step)
    w = weights[:, None] * along[None, :] * spacing * across
    splat(layer, px.ravel(), py.ravel(), w.ravel())


def segment_samples(
    size: int, p0: np.ndarray, p1: np.ndarray, width: float, value: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splat samples that draw many straight segments of one width (see :func:`draw_segments`).

    Returning the samples instead of splatting them lets a caller gather several batches of segments (e.g. all
    generations of a vessel tree) and splat them in one :func:`splat` call.

    Args:
        size: S, pixels per side of the target layer.
        p0, p1: (M, 2) normalised segment ends (x, y).
        width: line width (normalised).
        value: peak value added.

    Returns:
        px, py, weights: (k * M * n,) float64 pixel coordinates and weights for :func:`splat` (k samples across
        the line, n along each segment).
    """
    a = np.asarray(p0, np.float64) * size - 0.5
    b = np.asarray(p1, np.float64) * size - 0.5
    d = b - a
    length = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    n = int(np.ceil(length.max() / 0.5)) + 1
    t = np.linspace(0.0, 1.0, n)[None, :]
    step = (length / (n - 1))[:, None]  # per-segment spacing of the samples
    xs = a[:, :1] + d[:, :1] * t  # (M, n)
    ys = a[:, 1:] + d[:, 1:] * t
    nx, ny = (-d[:, 1] / length)[:, None], (d[:, 0] / length)[:, None]
    width_px = width * size
    k = max(1, math.ceil(width_px / 0.6))
    across = width_px / k if k > 1 else min(width_px, 1.0)
    offsets = ((np.arange(k) + 0.5) / k - 0.5) * width_px if k > 1 else np.zeros(1)
    px = (xs[None] + offsets[:, None, None] * nx[None]).ravel()  # (k, M, n) flattened
    py = (ys[None] + offsets[:, None, None] * ny[None]).ravel()
    w = np.broadcast_to(value * step * across, (k, len(a), n)).ravel()
    return px, py, w


def draw_segments(layer: np.ndarray, p0: np.ndarray, p1: np.ndarray, width: float, value: float) -> None:
    """Draw many straight segments of the same width (vectorised :func:`draw_curve`), in place.

    Args:
        layer: (S, S) float32 layer.
        p0, p1: (M, 2) normalised segment ends (x, y).
        width: line width (normalised).
        value: peak value added.
    """
    splat(layer, *segment_samples(layer.shape[0], p0, p1, width, value))


def smooth_noise(
    rng: np.random.Generator, small_shape: tuple[int, int], out_shape: tuple[int, int], sigma: float | tuple
) -> np.ndarray:
    """Smooth random field: white noise at low resolution, gaussian-filtered, bilinearly upsampled.

    Args:
        rng: random generator.
        small_shape: (h, w) of the low-resolution noise.
        out_shape: (H, W) output shape.
        sigma: gaussian sigma at low resolution (scalar or per axis).

    Returns:
        (H, W) float32, zero mean, unit standard deviation (approximately).
    """
    noise = ndimage.gaussian_filter(rng.standard_normal(small_shape).astype(np.float32), sigma, mode="wrap")
    noise /= max(float(noise.std()), 1e-6)
    image = Image.fromarray(noise, mode="F").resize((out_shape[1], out_shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32)


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates of an (S, S) image, shared read-only between callers.

    The arrays are cached per size and marked read-only, so every caller can broadcast against them without a
    copy and none can change them under the others.

    Args:
        size: S, pixels per side.

    Returns:
        x (1, S) and y (S, 1) float32 normalised coordinates.
    """
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = c[None, :].copy(), c[:, None].copy()
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def paste_mask(mask: np.ndarray, box: tuple[float, float, float, float], size: int, mirror: bool) -> np.ndarray:
    """Paste a uint8 soft mask, resized to a normalised box, into an empty image.

    The mask is resized bilinearly to the box's whole pixel extent first and only the part inside the image is
    copied, so a box that crosses the image border is cut rather than squeezed.

    Args:
        mask: (h, w) uint8 soft mask, 0..255.
        box: (y0, y1, x0, x1) normalised target box; may extend past the image.
        size: S, pixels per side of the output.
        mirror: flip the mask left-right before pasting.

    Returns:
        (S, S) float32 in [0, 1]; all zero when the box is under two pixels high or wide, or outside the image.
    """
    y0, y1, x0, x1 = box
    r0, r1 = int(round(y0 * size)), int(round(y1 * size))
    c0, c1 = int(round(x0 * size)), int(round(x1 * size))
    out = np.zeros((size, size), np.float32)
    if r1 - r0 < 2 or c1 - c0 < 2:
        return out
    source = mask[:, ::-1] if mirror else mask
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(source)).resize((c1 - c0, r1 - r0), Image.Resampling.BILINEAR),
        np.float32,
    )
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r1, size), min(c1, size)
    if rr1 <= rr0 or cc1 <= cc0:
        return out
    out[rr0:rr1, cc0:cc1] = resized[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] * (1.0 / 255.0)
    return out
