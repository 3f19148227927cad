"""Normal chest anatomy for PadChest-Synth: sampled geometry and the drawn layers.

This module holds the anatomy itself. It draws with the generic pixel helpers of :mod:`trcgl.data.synth.draw`
and takes its lung shapes from the real-mask atlas of :mod:`trcgl.data.synth.atlas`: :func:`sample_anatomy`
picks one lung pair of the atlas per image and :func:`rasterize_lung` pastes each lung into its drawn box.

Coordinates are normalised image coordinates: ``x`` grows to the image right, ``y`` grows downwards, both in
``[0, 1]`` whatever the pixel size. Radiological convention: on frontal views the patient's RIGHT is on the
image's LEFT. Sides are always named from the patient (``"right"``, ``"left"``).

A scene is a stack of ``(S, S)`` float32 layers in "density" units (dense = bright on the final image) that
``render.compose`` turns into one attenuation map:

- ``soft``: soft-tissue thickness of the body (0 outside the patient, ~1 at the centre of the trunk).
- ``lungs[side]``: fraction of the ray path that is lung air, per lung (0..1, soft edges).
- ``fill``: fraction of lung air replaced by fluid or tissue (heart, mediastinum, opacities); 0..1.
- ``markings``: parenchymal density inside aerated lung (1 = normal parenchyma, more on vessels).
- ``bone``: ribs, clavicles, spine, sternum (kept apart so fractures can cut and shift it).
- ``density``: additive density (mediastinal tissue, calcifications, metal).
- ``lucency``: additive air out of place (trachea, stomach gas, pneumothorax, subcutaneous air).

The normal anatomy is built in two steps so that findings can change it before anything is drawn:
``sample_anatomy`` draws the geometry parameters (an :class:`Anatomy`), finding "anatomy effects" edit them
(bigger heart, higher hemidiaphragm, larger lungs, ...), then ``build_scene`` draws the layers.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from trcgl.data.synth.atlas import load_lung_atlas
from trcgl.data.synth.draw import (
    Window,
    bezier,
    blob,
    draw_curve,
    make_window,
    paste_mask,
    pixel_grid,
    random_lobes,
    segment_samples,
    smoothstep,
    soft_inside,
    splat,
    spline,
)

RIGHT = "right"
LEFT = "left"
SIDES: tuple[str, str] = (RIGHT, LEFT)

CHEST_WIDTH_CM = 28.0  # outer-edge-to-outer-edge lung width of an average adult, for cm <-> image units


class View(enum.Enum):
    """Which way the beam went through the patient."""

    FRONTAL = "frontal"
    LATERAL = "lateral"


# --------------------------------------------------------------------------------------------------------------
# Geometry parameters
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """Geometry of one patient's chest, sampled before drawing so findings can change it.

    Lengths are normalised image units. ``lung_height`` is the normal-inspiration apex-to-base height; the drawn
    height is ``lung_height * inflation`` (hyperinflation > 1, hypoexpansion < 1).

    Attributes:
        view: frontal or lateral.
        supine: AP / AP_horizontal (portable): magnified heart, lower inspiration.
        atlas_index: which real lung-mask pair shapes the lungs.
        midline: x of the spine/mediastinum (frontal); x of the lung-field centre (lateral).
        lung_top: y of the lung apices.
        lung_width: outer-edge-to-outer-edge lung width (frontal) or depth of the lung field (lateral).
        lung_height: apex-to-base height at normal inspiration.
        rib_spacing: posterior rib pitch (fixed anatomy: inflation shows more ribs).
        inflation: multiplies the drawn lung height.
        dome_lift: per side, how much the hemidiaphragm is raised (fraction of lung height, + = higher).
        diaphragm_flattening: 0 normal domes .. 1 flat low diaphragm.
        ctr: cardiothoracic ratio (heart width / lung width).
        heart_height: vertical semi-axis of the heart above its widest row (fraction of lung height).
        knob_scale: aortic-knob size (1 normal).
        aorta_tortuosity: 0 straight descending aorta .. 1 very tortuous.
        mediastinal_shift: x shift of heart/mediastinum/trachea (image units, + = image right).
        air_gain: multiplies lung air (darker lungs > 1).
        marking_gain: multiplies the vessel markings.
        kyphosis: 0 normal .. 1 severe (lateral curve; frontal: apices shortened, ribs flattened).
        apex_drop: how much lower the lung apices project (frontal kyphosis; image units).
        clavicle_lift: clavicles projected higher (image units).
        stomach_bubble: whether the gastric air bubble is visible.
        choices: decisions an anatomy effect makes that the finding's drawing must reuse (e.g. its side).
    """

    view: View
    supine: bool
    atlas_index: int
    midline: float
    lung_top: float
    lung_width: float
    lung_height: float
    rib_spacing: float
    ctr: float
    heart_height: float
    stomach_bubble: bool
    inflation: float = 1.0
    dome_lift: dict[str, float] = field(default_factory=lambda: {RIGHT: 0.0, LEFT: 0.0})
    diaphragm_flattening: float = 0.0
    knob_scale: float = 1.0
    aorta_tortuosity: float = 0.0
    mediastinal_shift: float = 0.0
    air_gain: float = 1.0
    marking_gain: float = 1.0
    kyphosis: float = 0.0
    apex_drop: float = 0.0
    clavicle_lift: float = 0.0
    choices: dict[str, Any] = field(default_factory=dict)

    @property
    def cm(self) -> float:
        """One centimetre in normalised image units."""
        return self.lung_width / CHEST_WIDTH_CM


def sample_anatomy(rng: np.random.Generator, view: View, supine: bool) -> Anatomy:
    """Draw a normal chest's geometry.

    Args:
        rng: the image's anatomy random stream.
        view: frontal or lateral.
        supine: portable AP film (magnified heart, lower inspiration).

    Returns:
        The parameters; nothing is drawn yet.
    """
    atlas = load_lung_atlas()
    index = int(rng.integers(len(atlas)))
    width = rng.uniform(0.70, 0.80)
    height = width * rng.uniform(0.80, 0.95)
    anatomy = Anatomy(
        view=view,
        supine=supine,
        atlas_index=index,
        midline=0.5 + rng.normal(0.0, 0.012),
        lung_top=rng.uniform(0.07, 0.12),
        lung_width=width,
        lung_height=height,
        rib_spacing=height / rng.uniform(9.6, 10.6),
        ctr=rng.uniform(0.39, 0.49),
        heart_height=rng.uniform(0.25, 0.31),
        stomach_bubble=bool(rng.random() < 0.7),
        dome_lift={RIGHT: rng.uniform(0.0, 0.05), LEFT: 0.0},
    )
    if supine:  # portable film: magnification and a poorer inspiration
        anatomy.ctr = anatomy.ctr + rng.uniform(0.02, 0.05)
        anatomy.inflation = rng.uniform(0.88, 0.96)
        anatomy.clavicle_lift = rng.uniform(0.01, 0.03)
    if view is View.LATERAL:
        anatomy.midline = rng.uniform(0.47, 0.52)
        anatomy.lung_width = rng.uniform(0.5, 0.58)
    return anatomy


# --------------------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """All drawn layers of one image plus the landmarks findings need.

    Attributes:
        anatomy: the (possibly finding-modified) geometry that was drawn.
        size: S, pixels per side.
        x: (1, S) float32 normalised x of pixel centres.
        y: (S, 1) float32 normalised y.
        soft, fill, markings, bone, density, lucency: (S, S) float32 layers (see module docstring).
        lungs: per side (S, S) float32 lung-air fraction.
        lung_boxes: per side drawn lung box (y0, y1, x0, x1), normalised.
        outward: per side, +1 when that lung's chest wall is towards the image right, else -1.
        landmarks: named normalised (x, y) points: hilum_right/left, carina, knob, svc_tip, rv_apex,
            neck_right/left, subclavian_right/left, stomach, gej, sternum_top, sternum_bottom, heart_centre.
        knob_radius: aortic-knob radius.
        heart_extent: (x_right_border, x_left_border, y_widest, half_height) of the heart.
        spine_x: (S,) float32 normalised x of the spine axis per row.
        vertebra_pitch: vertebral pitch (normalised); endplates at ``vertebra_phase0 + k * pitch``.
        vertebra_phase0: y of one endplate.
        vertebra_half_width: half width (frontal) or half depth (lateral) of the vertebral bodies.
        clavicles: per side (M, 2) normalised clavicle centre-line points, medial to lateral (frontal only).
        body: (S, S) float32 0..1 mask of the patient's body.
        aorta_path: (M, 2) centre line of the aortic arch and descending aorta (lateral only).
        rib_curve: function (side, rib index, u in [0, 1.1]) -> (x, y) centre of a posterior rib (frontal only).
        rib_height: thickness of a rib (normalised).
    """

    anatomy: Anatomy
    size: int
    x: np.ndarray
    y: np.ndarray
    soft: np.ndarray
    fill: np.ndarray
    markings: np.ndarray
    bone: np.ndarray
    density: np.ndarray
    lucency: np.ndarray
    lungs: dict[str, np.ndarray]
    lung_boxes: dict[str, tuple[float, float, float, float]]
    outward: dict[str, int]
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    knob_radius: float = 0.0
    heart_extent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    spine_x: np.ndarray | None = None
    vertebra_pitch: float = 0.0
    vertebra_phase0: float = 0.0
    vertebra_half_width: float = 0.0
    clavicles: dict[str, np.ndarray] = field(default_factory=dict)
    body: np.ndarray | None = None
    aorta_path: np.ndarray | None = None
    rib_curve: Callable[[str, int, float], tuple[float, float]] | None = None
    rib_height: float = 0.0
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def view(self) -> View:
        return self.anatomy.view

    @property
    def cm(self) -> float:
        """One centimetre in normalised image units."""
        return self.anatomy.cm

    def window(self, x0: float, x1: float, y0: float, y1: float) -> Window | None:
        """Window over the normalised box [x0, x1] x [y0, y1] (clipped); None when outside the image."""
        return make_window(self.size, x0, x1, y0, y1)

    def window_around(self, cx: float, cy: float, rx: float, ry: float | None = None) -> Window | None:
        """Window of half sizes (rx, ry) around a point."""
        ry = rx if ry is None else ry
        return self.window(cx - rx, cx + rx, cy - ry, cy + ry)

    def air(self) -> np.ndarray:
        """(S, S) lung-air fraction of both lungs (superimposed on laterals)."""
        if self.view is View.LATERAL:
            return 0.5 * (self.lungs[RIGHT] + self.lungs[LEFT])
        return np.minimum(self.lungs[RIGHT] + self.lungs[LEFT], 1.0)

    def lung_rows(self, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row horizontal extent of one lung.

        Returns:
            has (S,) bool rows containing lung, x_min (S,) and x_max (S,) normalised extents (undefined where
            ``has`` is False).
        """
        key = ("rows", side)
        if key not in self._cache:
            inside = self.lungs[side] > 0.5
            has = inside.any(axis=1)
            first = inside.argmax(axis=1)
            last = self.size - 1 - inside[:, ::-1].argmax(axis=1)
            self._cache[key] = (has, (first + 0.5) / self.size, (last + 0.5) / self.size)
        return self._cache[key]

    def lung_cols(self, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-column vertical extent of one lung: has (S,), y_top (S,), y_bottom (S,) normalised."""
        key = ("cols", side)
        if key not in self._cache:
            inside = self.lungs[side] > 0.5
            has = inside.any(axis=0)
            first = inside.argmax(axis=0)
            last = self.size - 1 - inside[::-1, :].argmax(axis=0)
            self._cache[key] = (has, (first + 0.5) / self.size, (last + 0.5) / self.size)
        return self._cache[key]

    def lateral_edge(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-row chest-wall edge of one lung: has (S,) bool and x (S,) normalised."""
        has, x_min, x_max = self.lung_rows(side)
        return has, (x_max if self.outward[side] > 0 else x_min)

    def dome_y(self, side: str, x: float) -> float:
        """y of the lung base (diaphragm) of one lung at column x (its box bottom when x is outside it)."""
        has, _, bottom = self.lung_cols(side)
        col = min(self.size - 1, max(0, int(x * self.size)))
        return float(bottom[col]) if has[col] else self.lung_boxes[side][1]

    def sample_lung_point(
        self,
        rng: np.random.Generator,
        side: str,
        band: tuple[float, float] = (0.1, 0.9),
        margin: float = 0.0,
    ) -> tuple[float, float]:
        """A random point well inside one lung, within a vertical band of it.

        Args:
            rng: random generator.
            side: patient side.
            band: (from, to) fractions of the lung's height (0 apex, 1 base).
            margin: minimum distance to the lung edge (normalised); relaxed when nothing fits.

        Returns:
            (x, y) normalised.
        """
        step = max(1, self.size // 64)
        sub = (slice(step // 2, None, step), slice(step // 2, None, step))
        coarse = (self.lungs[side][sub] > 0.9) & (self.fill[sub] < 0.3)  # aerated lung, not behind the heart
        y0, y1, x0, x1 = self.lung_boxes[side]
        rows = (np.arange(coarse.shape[0]) * step + step // 2 + 0.5) / self.size
        in_band = (rows >= y0 + band[0] * (y1 - y0)) & (rows <= y0 + band[1] * (y1 - y0))
        for m in (margin, margin / 2, 0.0):
            iterations = int(round(m * self.size / step))
            ok = ndimage.binary_erosion(coarse, iterations=iterations) if iterations else coarse
            ok = ok & in_band[:, None]
            idx = np.flatnonzero(ok)
            if idx.size:
                pick = int(idx[rng.integers(idx.size)])
                r, c = divmod(pick, coarse.shape[1])
                jitter = rng.uniform(-0.5, 0.5, 2) * step
                return (
                    (c * step + step // 2 + 0.5 + jitter[0]) / self.size,
                    (r * step + step // 2 + 0.5 + jitter[1]) / self.size,
                )
        if band != (0.0, 1.0):
            return self.sample_lung_point(rng, side, (0.0, 1.0), 0.0)
        return (0.5 * (x0 + x1), y0 + 0.5 * (band[0] + band[1]) * (y1 - y0))


# --------------------------------------------------------------------------------------------------------------
# Building the normal scene
# --------------------------------------------------------------------------------------------------------------

# Density of each tissue (arbitrary units; the body centre is ~1, lung air removes most of it).
BONE_DENSITY = 0.11
CORTEX_DENSITY = 0.06
MEDIASTINUM_DENSITY = 0.05
HEART_DENSITY = 0.06
TRACHEA_LUCENCY = 0.12
SPINE_DENSITY = 0.075
STOMACH_LUCENCY = 0.14


def rasterize_lung(scene_size: int, anatomy: Anatomy, side: str, box: tuple[float, float, float, float]) -> np.ndarray:
    """(S, S) float32 soft mask of one atlas lung drawn into ``box`` (used for collapsed lungs too)."""
    atlas = load_lung_atlas()
    mask = atlas.masks[anatomy.atlas_index, SIDES.index(side)]
    if anatomy.view is View.LATERAL:
        # Lateral: the lung's convex chest-wall border faces the back (image right) for both lungs.
        return paste_mask(mask, box, scene_size, mirror=(side == RIGHT))
    return paste_mask(mask, box, scene_size, mirror=False)


def _lung_boxes(anatomy: Anatomy) -> dict[str, tuple[float, float, float, float]]:
    """Drawn box (y0, y1, x0, x1) of each lung from the atlas proportions and the anatomy parameters."""
    atlas = load_lung_atlas()
    frac = atlas.boxes[anatomy.atlas_index]  # (2, 4) within the pair box
    height = anatomy.lung_height * anatomy.inflation
    top = anatomy.lung_top - 0.25 * (anatomy.inflation - 1.0) * anatomy.lung_height  # inflation also lifts apices
    top = max(top, 0.03)
    height = min(height, 0.95 - top)
    boxes = {}
    if anatomy.view is View.FRONTAL:
        left_edge = anatomy.midline - anatomy.lung_width / 2
        for i, side in enumerate(SIDES):
            fy0, fy1, fx0, fx1 = (float(v) for v in frac[i])
            y0 = top + fy0 * height
            y1 = top + fy1 * height - anatomy.dome_lift[side] * anatomy.lung_height
            y0 = min(y0 + anatomy.apex_drop, y1 - 0.3 * height)
            boxes[side] = (
                y0,
                max(y1, y0 + 0.3 * height),
                left_edge + fx0 * anatomy.lung_width,
                left_edge + fx1 * anatomy.lung_width,
            )
    else:
        depth = anatomy.lung_width
        for side in SIDES:
            i = SIDES.index(side)
            fy0, fy1 = (float(v) for v in frac[i, :2])
            y0 = top + fy0 * height
            y1 = top + fy1 * height - anatomy.dome_lift[side] * anatomy.lung_height
            shift = -0.006 if side == RIGHT else 0.006  # the two lungs do not project exactly on each other
            x0 = anatomy.midline - depth / 2 + shift
            boxes[side] = (y0 + 0.5 * shift, max(y1, y0 + 0.3 * height) + shift, x0, x0 + depth)
    return boxes


def _flatten_bases(scene: Scene, boxes: dict[str, tuple[float, float, float, float]]) -> None:
    """Cut the lung bases to low, nearly flat diaphragms (emphysema / hyperinflation)."""
    flat = scene.anatomy.diaphragm_flattening
    for side, lung in scene.lungs.items():
        y0, y1, x0, x1 = boxes[side]
        cut = y1 - (1.0 - flat) * 0.06 * (y1 - y0)
        u = (scene.x - 0.5 * (x0 + x1)) / (0.5 * (x1 - x0))
        line = cut - 0.015 * (1.0 - flat) * (1.0 - np.clip(u * u, 0, 1))
        lung *= soft_inside(line - scene.y, 2.0 / scene.size)


LUNG_DEPTH_CM = 4.0  # lung thickness grows from its edge over about this distance
LUNG_EDGE_AIR = 0.45  # air fraction right at a lung's edge, relative to its thick centre


def _taper_lung(scene: Scene, side: str) -> None:
    """Make a lung thinner towards its edges (the beam crosses less air there), in place.

    The distance to the lung edge is computed at low resolution and upsampled: cheap at any image size.
    """
    lung = scene.lungs[side]
    small = max(32, scene.size // 8)
    low = np.asarray(Image.fromarray(lung).resize((small, small), Image.Resampling.BILINEAR)) > 0.5
    dist = ndimage.distance_transform_edt(low).astype(np.float32) / small  # normalised distance to the edge
    depth = np.sqrt(np.clip(dist / (LUNG_DEPTH_CM * scene.cm), 0.0, 1.0))
    up = np.asarray(Image.fromarray(depth, mode="F").resize((scene.size, scene.size), Image.Resampling.BILINEAR))
    lung *= LUNG_EDGE_AIR + (1.0 - LUNG_EDGE_AIR) * up


def _extended_boxes(anatomy: Anatomy, boxes: dict[str, tuple[float, float, float, float]]) -> dict:
    """Boxes stretched downwards so a flattening cut removes the domes rather than shrinking the lungs."""
    extra = anatomy.diaphragm_flattening * 0.18
    return {s: (b[0], b[1] + extra * (b[1] - b[0]), b[2], b[3]) for s, b in boxes.items()}


MARKINGS_MAX_SIZE = 256  # vessels are drawn at most at this resolution, then upsampled (they are blurry anyway)


def _markings_canvas(scene: Scene) -> np.ndarray:
    """Empty (s, s) float32 layer for the vessel trees, s = min(S, MARKINGS_MAX_SIZE)."""
    small = min(scene.size, MARKINGS_MAX_SIZE)
    return np.zeros((small, small), np.float32)


def _set_markings(scene: Scene, vessels: np.ndarray) -> None:
    """markings = 1 (parenchyma) + vessels, upsampled to the scene size when drawn smaller."""
    if vessels.shape[0] != scene.size:
        image = Image.fromarray(vessels, mode="F").resize((scene.size, scene.size), Image.Resampling.BILINEAR)
        vessels = np.asarray(image, np.float32)
    np.add(vessels, 1.0, out=scene.markings)


def _vessel_tree(
    layer: np.ndarray,
    rng: np.random.Generator,
    hilum: tuple[float, float],
    outward: int,
    reach: float,
    scale: float,
    angles: tuple[float, float],
    gain: float,
) -> None:
    """Branching pulmonary vessels from a hilum, drawn generation by generation (vectorised).

    Each generation is shorter, thinner and fainter than its parent and splits in two, so vessels taper and
    fade towards the periphery like real lung markings.

    Args:
        layer: (S, S) markings layer (values added).
        rng: random generator.
        hilum: (x, y) centre of the hilum; trunks start scattered around it.
        outward: +1 to fan towards the image right, -1 to the left.
        reach: typical hilum-to-periphery distance (normalised).
        scale: main-vessel width (normalised).
        angles: (min, max) elevation of the main trunks in degrees (negative = upwards).
        gain: amplitude multiplier (marking_gain).
    """
    trunks = 9
    elevation = np.deg2rad(np.sort(rng.uniform(*angles, trunks)))
    # Trunks leave along the whole height of the hilum: upper ones go up, lower ones down.
    spread_y = 4.5 * scale * elevation / np.deg2rad(90.0)
    tips = np.stack([hilum[0] + rng.normal(0.0, 0.8 * scale, trunks), hilum[1] + spread_y], axis=1)
    length = reach * 0.2
    width = scale
    amp = 1.3 * gain
    samples = []
    for _generation in range(7):
        count = len(elevation)
        seg = length * rng.uniform(0.6, 1.3, count)
        direction = np.stack([outward * np.cos(elevation), np.sin(elevation)], axis=1)
        ends = tips + direction * seg[:, None]
        samples.append(segment_samples(layer.shape[0], tips, ends, width, amp))
        spread = np.deg2rad(rng.uniform(10, 28, count))
        wiggle = np.deg2rad(rng.normal(0, 8, count))
        elevation = np.concatenate([elevation + wiggle - spread * 0.6, elevation + wiggle + spread * 0.6])
        tips = np.concatenate([ends, ends])
        length *= 0.8
        width *= 0.75
        amp *= 0.84
    splat(layer, *(np.concatenate(parts) for parts in zip(*samples, strict=True)))


def build_scene(anatomy: Anatomy, size: int, rng: np.random.Generator) -> Scene:
    """Draw a normal chest with the given geometry.

    Args:
        anatomy: geometry (after the findings' anatomy effects).
        size: S, output pixels per side.
        rng: the image's scene-drawing random stream.

    Returns:
        The scene with all normal layers drawn.
    """
    x, y = pixel_grid(size)
    boxes = _lung_boxes(anatomy)
    drawn = _extended_boxes(anatomy, boxes) if anatomy.diaphragm_flattening > 0 else boxes
    lungs = {side: rasterize_lung(size, anatomy, side, drawn[side]) for side in SIDES}
    frontal = anatomy.view is View.FRONTAL
    outward = {RIGHT: -1, LEFT: 1} if frontal else {RIGHT: 1, LEFT: 1}
    zeros = functools.partial(np.zeros, (size, size), np.float32)
    scene = Scene(
        anatomy=anatomy,
        size=size,
        x=x,
        y=y,
        soft=zeros(),
        fill=zeros(),
        markings=zeros(),
        bone=zeros(),
        density=zeros(),
        lucency=zeros(),
        lungs=lungs,
        lung_boxes=boxes,
        outward=outward,
    )
    if anatomy.diaphragm_flattening > 0:
        _flatten_bases(scene, boxes)
    for side in SIDES:
        _taper_lung(scene, side)
    if frontal:
        _draw_frontal(scene, rng)
    else:
        _draw_lateral(scene, rng)
    return scene


# ---------------------------------------------------------------------------------------------- frontal view


def _draw_frontal(scene: Scene, rng: np.random.Generator) -> None:
    """Body, mediastinum, heart, bones, airways, vessels and stomach gas of a frontal (PA/AP) film."""
    a = scene.anatomy
    cx = a.midline
    cm = scene.cm
    # Skeleton, body and airways hang on the anatomical (normal-inspiration) chest, so findings that change
    # lung volume move the lungs and diaphragm, not the shoulders and ribs.
    top = a.lung_top
    height = a.lung_height
    _frontal_body(scene, rng, cx, top)
    mcx = cx + a.mediastinal_shift

    # Heart: asymmetric ellipse, a third right of the midline, two thirds left; widest row near the bases.
    heart_width = a.ctr * a.lung_width
    right_ext, left_ext = 0.36 * heart_width, 0.64 * heart_width
    base_left = scene.lung_boxes[LEFT][1]
    base_right = scene.lung_boxes[RIGHT][1]
    widest = max(base_left, base_right) - 0.09 * height
    half_h = a.heart_height * a.lung_height
    win = scene.window(mcx - right_ext - 0.02, mcx + left_ext + 0.02, widest - half_h - 0.02, 1.0)
    if win is not None:
        dx = win.x - mcx
        semi_x = np.where(dx < 0, right_ext, left_ext)
        row0 = np.where(dx < 0, widest - 0.02 * height, widest + 0.02 * height)
        dy = win.y - row0
        semi_y = np.where(dy < 0, half_h, 2.5 * half_h)
        rho = np.sqrt((dx / semi_x) ** 2 + (dy / semi_y) ** 2)
        heart = soft_inside((1.0 - rho) * np.minimum(semi_x, semi_y), 2.5 / scene.size)
        heart *= soft_inside(max(base_left, base_right) + 0.02 - win.y, 0.04)  # merges into the abdomen
        scene.fill[win.rows, win.cols] = np.maximum(scene.fill[win.rows, win.cols], heart)
        scene.density[win.rows, win.cols] += HEART_DENSITY * heart
    scene.heart_extent = (mcx - right_ext, mcx + left_ext, widest, half_h)

    # Upper mediastinum (great vessels), aortic knob, descending aorta.
    knob_r = 0.034 * a.knob_scale * a.lung_width / 0.75
    knob = (mcx + 0.025 + 0.45 * knob_r, top + (0.25 - 0.06 * (a.knob_scale - 1.0)) * height)
    heart_top = widest - half_h
    win = scene.window(mcx - 0.2, mcx + 0.2, 0.0, heart_top + 0.1)
    if win is not None:
        hw = 0.04 + 0.012 * smoothstep((win.y - top) / (0.3 * height))
        band = soft_inside(hw - np.abs(win.x - mcx - 0.008), 3.0 / scene.size)
        band = band * soft_inside(heart_top + 0.08 - win.y, 0.05)
        knob_field = 0.9 * blob(win, *knob, 1.2 * knob_r, knob_r * 1.2, softness=0.45)
        mediast = np.maximum(band, knob_field)
        scene.fill[win.rows, win.cols] = np.maximum(scene.fill[win.rows, win.cols], mediast)
        scene.density[win.rows, win.cols] += MEDIASTINUM_DENSITY * mediast
    scene.knob_radius = knob_r
    aorta = np.array([knob, (knob[0] - 0.005, knob[1] + 0.15 * height), (mcx + 0.03, widest + 0.05)])
    draw_curve(scene.density, bezier(aorta, 48), 2.6 * cm, 0.015)

    # Trachea, carina, main bronchi.
    carina = (mcx + 0.004, top + 0.30 * height)
    hila = {side: _hilum(scene, side, top + (0.43 if side == RIGHT else 0.39) * height) for side in SIDES}
    trachea = bezier(np.array([(cx, 0.0), (mcx - 0.003, top), carina]), 40)
    draw_curve(scene.lucency, trachea, 1.7 * cm, TRACHEA_LUCENCY)
    for side in SIDES:
        bronchus = bezier(np.array([carina, (0.5 * (carina[0] + hila[side][0]), carina[1] + 0.02), hila[side]]))
        draw_curve(scene.lucency, bronchus, 1.0 * cm, 0.6 * TRACHEA_LUCENCY)

    # Hila and vessels.
    vessels = _markings_canvas(scene)
    for side in SIDES:
        hx, hy = hila[side]
        win = scene.window_around(hx, hy, 3.0 * cm, 5.2 * cm)
        if win is not None:
            hilum = blob(win, hx, hy, 1.2 * cm, 2.6 * cm, softness=0.9, lobes=random_lobes(rng, 0.15))
            scene.fill[win.rows, win.cols] = np.maximum(scene.fill[win.rows, win.cols], 0.22 * hilum)
        reach = 0.5 * a.lung_width * 0.9
        _vessel_tree(vessels, rng, hila[side], scene.outward[side], reach, 0.55 * cm, (-95, 95), a.marking_gain)
    _set_markings(scene, vessels)

    _frontal_spine(scene, cx, top)
    _frontal_ribs(scene, cx, top)
    _frontal_clavicles(scene, cx, top)

    # Gastric air bubble under the left hemidiaphragm.
    lx0, lx1 = scene.lung_boxes[LEFT][2:]
    stomach = (lx0 + 0.45 * (lx1 - lx0), 0.0)
    stomach = (stomach[0], scene.dome_y(LEFT, stomach[0]) + 0.035)
    if a.stomach_bubble:
        win = scene.window_around(*stomach, 0.08)
        if win is not None:
            rx, ry = rng.uniform(1.5, 2.6) * cm, rng.uniform(0.9, 1.4) * cm
            bubble = blob(win, *stomach, rx, ry, softness=0.25) * (win.y < stomach[1] + 0.3 * ry)
            scene.lucency[win.rows, win.cols] += STOMACH_LUCENCY * bubble
    scene.landmarks.update(
        hilum_right=hila[RIGHT],
        hilum_left=hila[LEFT],
        carina=carina,
        knob=knob,
        heart_centre=(mcx + 0.1 * heart_width, widest - 0.3 * half_h),
        svc_tip=(mcx - 0.032, carina[1] + 0.07 * height),
        rv_apex=(mcx + 0.45 * left_ext, widest + 0.02 * height),
        neck_right=(cx - 0.06, 0.0),
        neck_left=(cx + 0.06, 0.0),
        subclavian_right=(cx - 0.24, top + 0.02 + a.clavicle_lift),
        subclavian_left=(cx + 0.24, top + 0.02 + a.clavicle_lift),
        stomach=stomach,
        gej=(mcx + 0.04, scene.dome_y(LEFT, mcx + 0.05) + 0.01),
        sternum_top=(mcx, top + 0.08 * height),
        sternum_bottom=(mcx + 0.01, widest - 0.1 * height),
        trachea_top=(cx, 0.02),
    )


def _hilum(scene: Scene, side: str, y: float) -> tuple[float, float]:
    """Hilum position: just inside the lung's mediastinal border at height y (frontal view)."""
    has, x_min, x_max = scene.lung_rows(side)
    row = min(scene.size - 1, max(0, int(y * scene.size)))
    outward = scene.outward[side]
    if has[row]:
        medial = float(x_max[row] if outward < 0 else x_min[row])
    else:
        y0, y1, x0, x1 = scene.lung_boxes[side]
        medial = x1 if outward < 0 else x0
    return medial + outward * 0.6 * scene.cm, y


def _frontal_body(scene: Scene, rng: np.random.Generator, cx: float, top: float) -> None:
    """Trunk, shoulders and neck soft tissue: thickest in the middle, thin at the flanks."""
    a = scene.anatomy
    half = 0.5 * a.lung_width + rng.uniform(0.045, 0.075)
    shoulder_width = rng.uniform(0.1, 0.16)
    rows = scene.y - top
    # Half width per row (S, 1): shoulders and upper arms above, chest, slight waist below the lungs.
    half_width = half + shoulder_width * np.exp(-(((rows + 0.01) / 0.13) ** 2))
    half_width = half_width - 0.03 * smoothstep((rows - a.lung_height) / 0.2)
    dx = np.abs(scene.x - cx)
    neck = rng.uniform(0.075, 0.095)
    # Top edge per column (1, S): the neck reaches the image top, the shoulders slope down and out.
    shoulder_top = top - 0.05 + 0.35 * np.clip(dx - neck, 0.0, None) ** 1.6
    top_edge = shoulder_top - (top + 0.05) * np.exp(-((np.clip(dx - 0.5 * neck, 0.0, None) / (0.35 * neck)) ** 2))
    inside = soft_inside(half_width - dx, 0.012) * soft_inside(scene.y - top_edge, 0.03)
    thickness = np.clip(1.0 - (dx / (half_width + 0.01)) ** 2, 0.0, 1.0) ** 0.75
    scene.soft[:] = inside * (0.3 + 0.7 * thickness)
    scene.body = inside


def _frontal_spine(scene: Scene, cx: float, top: float) -> None:
    """Vertebral column: bodies with cortical endplates, disc spaces and paired pedicles."""
    a = scene.anatomy
    pitch = a.rib_spacing
    half = 0.034 * a.lung_width / 0.75
    win = scene.window(cx - half - 0.01, cx + half + 0.01, 0.0, 1.0)
    phase0 = top - 0.2 * pitch
    scene.spine_x = np.full(scene.size, cx, np.float32)
    scene.vertebra_pitch, scene.vertebra_phase0, scene.vertebra_half_width = pitch, phase0, half
    if win is None:
        return
    dx = win.x - cx
    body = soft_inside(half - np.abs(dx), 2.0 / scene.size)
    f = np.mod((win.y - phase0) / pitch, 1.0)
    d = np.minimum(f, 1.0 - f)  # distance to the nearest endplate, in pitches
    disc = np.exp(-((d / 0.07) ** 2))
    endplate = np.exp(-(((d - 0.1) / 0.035) ** 2))
    lateral_cortex = np.exp(-(((np.abs(dx) - half) / (0.004 + 1.0 / scene.size)) ** 2))
    pedicles = np.exp(-(((np.abs(dx) - 0.7 * half) / (0.22 * half)) ** 2) - (((f - 0.35) / 0.12) ** 2))
    column = body * (SPINE_DENSITY * (1.0 - 0.6 * disc) + CORTEX_DENSITY * endplate) + CORTEX_DENSITY * (
        0.25 * lateral_cortex * (1.0 - disc) + 0.8 * pedicles
    )
    scene.bone[win.rows, win.cols] += column * scene.body[win.rows, win.cols]


def _rib_offset(u: np.ndarray | float, height: float, flatten: float) -> np.ndarray | float:
    """Vertical course of a posterior rib at lateral position u (0 spine, 1 chest wall): slight rise, then drop."""
    return height * (1.0 - 0.6 * flatten) * (0.25 * np.abs(u) ** 2.5 - 0.05 * u)


def _frontal_ribs(scene: Scene, cx: float, top: float) -> None:
    """Posterior ribs (bands with bright cortical edges) and faint anterior ribs, both sides."""
    a = scene.anatomy
    pitch = a.rib_spacing
    half_w = 0.5 * a.lung_width
    height = a.lung_height
    first = top - 0.55 * pitch
    rib_frac = 0.42  # rib height as a fraction of the pitch
    scene.rib_height = rib_frac * pitch
    flatten = a.kyphosis
    edge_px = max(1.0, 0.08 * pitch * scene.size)

    def rib_curve(side: str, k: int, u: float) -> tuple[float, float]:
        o = scene.outward[side]
        return cx + o * u * half_w, first + (k + rib_frac / 2) * pitch + float(_rib_offset(u, height, flatten))

    scene.rib_curve = rib_curve
    for side in SIDES:
        o = scene.outward[side]
        x0, x1 = (cx - half_w * 1.2, cx) if o < 0 else (cx, cx + half_w * 1.2)
        win = scene.window(x0, x1, first - 0.05, top + 1.2 * height * max(1.0, a.inflation))
        if win is None:
            continue
        u = np.abs(win.x - cx) / half_w
        phase = (win.y - first - _rib_offset(u, height, flatten)) / pitch
        phase = phase - 0.05 * np.sin(phase * 1.7)  # ribs are not perfectly evenly spaced
        g = np.mod(phase, 1.0) / rib_frac  # 0..1 inside a rib
        inside = np.clip(np.minimum(g, 1.0 - g) * (rib_frac * pitch * scene.size / edge_px), 0.0, 1.0) * (g < 1.0)
        cortex = 4.0 * inside * (1.0 - inside)
        lower_fade = 1.0 - 0.75 * smoothstep((win.y - scene.lung_boxes[side][1]) / 0.08)
        # Thoracic cage: narrow at the apex, full width a quarter of the way down.
        cage = 1.14 * np.sqrt(np.clip((win.y - first + 0.3 * pitch) / (0.3 * height), 0.0, 1.0))
        extent = smoothstep((u - 0.06) / 0.08) * smoothstep((cage - u) / 0.06) * (phase > 0) * lower_fade
        scene.bone[win.rows, win.cols] += extent * (0.45 * BONE_DENSITY * inside + 0.7 * CORTEX_DENSITY * cortex)
        # Anterior ribs: fainter, descending towards the midline, no medial (cartilage) part.
        phase_a = (win.y - first - 0.12 * height - 0.22 * height * (1.0 - u)) / (1.2 * pitch)
        ga = np.mod(phase_a, 1.0) / 0.36
        band_a = np.clip(np.minimum(ga, 1.0 - ga) * 4.0, 0.0, 1.0) * (ga < 1.0)
        extent_a = smoothstep((u - 0.4) / 0.2) * smoothstep((1.1 - u) / 0.05) * (phase_a > 0) * (phase_a < 7)
        scene.bone[win.rows, win.cols] += 0.25 * BONE_DENSITY * band_a * extent_a


def _frontal_clavicles(scene: Scene, cx: float, top: float) -> None:
    """Clavicles: S-shaped bones from the sternal notch out to the shoulders, above the apices."""
    a = scene.anatomy
    lift = a.clavicle_lift + 0.4 * a.kyphosis * a.rib_spacing
    width = 1.1 * scene.cm
    for side in SIDES:
        o = scene.outward[side]
        medial = (cx + o * 0.03, top + 0.045 - lift)
        lateral = (cx + o * (0.5 * a.lung_width + 0.02), top - 0.015 - lift)
        ctrl = np.array(
            [medial, (cx + o * 0.12, top + 0.03 - lift), (cx + o * 0.22, top - 0.01 - lift), lateral],
        )
        pts = bezier(ctrl, 64)
        scene.clavicles[side] = pts
        draw_curve(
            scene.bone,
            pts,
            width,
            BONE_DENSITY * 1.3,
            profile=lambda p: 0.55 + 0.45 * np.abs(p) ** 3,
        )


# ---------------------------------------------------------------------------------------------- lateral view


def _draw_lateral(scene: Scene, rng: np.random.Generator) -> None:
    """Lateral film (patient facing the image left): chest wall in front, spine at the back right."""
    a = scene.anatomy
    cm = scene.cm
    top = min(b[0] for b in scene.lung_boxes.values())
    height = max(b[1] for b in scene.lung_boxes.values()) - top
    front = min(b[2] for b in scene.lung_boxes.values())
    back = max(b[3] for b in scene.lung_boxes.values())

    # Spine along the back, with the thoracic (kyphotic) curve.
    pitch = a.rib_spacing
    curve_amp = 0.015 + 0.07 * a.kyphosis
    t = np.clip((scene.y[:, 0] - top) / height, -0.2, 1.3)
    spine_x = back + 0.035 + curve_amp * np.sin(np.pi * np.clip(t, 0, 1)) - 0.02 * np.clip(t - 1.0, 0, None)
    scene.spine_x = spine_x.astype(np.float32)
    half_depth = 0.032 * a.lung_width / 0.55
    scene.vertebra_pitch, scene.vertebra_phase0, scene.vertebra_half_width = pitch, top, half_depth

    # Body: deep ellipse following the spine behind, narrower neck above the apices.
    anterior = front - 0.05 - 0.04 * ((scene.y - 0.55) / 0.5) ** 2 + 0.15 * smoothstep((top - scene.y) / 0.1)
    posterior = scene.spine_x[:, None] + 0.12 - 0.06 * smoothstep((top - scene.y) / 0.12)
    inside = soft_inside(scene.x - anterior, 0.012) * soft_inside(posterior - scene.x, 0.012)
    centre = 0.5 * (anterior + posterior)
    half = 0.5 * (posterior - anterior)
    thickness = np.sqrt(np.clip(1.0 - ((scene.x - centre) / (half + 0.02)) ** 2, 0.0, 1.0))
    scene.soft[:] = inside * (0.65 + 0.45 * thickness)
    scene.body = inside

    win = scene.window(back - 0.06, min(1.0, back + 0.25), 0.0, 1.0)
    if win is not None:
        sx = scene.spine_x[win.rows][:, None]
        dx = win.x - sx
        wedge = 0.12 * a.kyphosis * (dx / half_depth)  # anterior wedging: discs close in front
        f = np.mod((win.y - top) / pitch + wedge, 1.0)
        d = np.minimum(f, 1.0 - f)
        body = soft_inside(half_depth - np.abs(dx), 2.0 / scene.size)
        disc = np.exp(-((d / 0.08) ** 2))
        endplate = np.exp(-(((d - 0.1) / 0.035) ** 2))
        posterior_el = np.exp(-(((dx - 2.2 * half_depth) / (0.7 * half_depth)) ** 2)) * (
            0.6 + 0.4 * np.cos(2 * np.pi * (f - 0.5))
        )
        column = body * (SPINE_DENSITY * (1.0 - 0.65 * disc) + CORTEX_DENSITY * endplate)
        column += 0.4 * SPINE_DENSITY * posterior_el
        scene.bone[win.rows, win.cols] += column * inside[win.rows, win.cols]

    # Heart: anterior and inferior, over the front of the lung field.
    base = max(b[1] for b in scene.lung_boxes.values())
    hr = (0.13 + 0.3 * (a.ctr - 0.45)) * a.lung_width / 0.55
    heart_c = (front + 0.95 * hr, base - 0.75 * hr)
    win = scene.window_around(*heart_c, 1.6 * hr)
    if win is not None:
        heart = blob(win, *heart_c, hr, 1.05 * hr, angle=-0.5, softness=0.1, lobes=random_lobes(rng, 0.05))
        heart *= soft_inside(base + 0.02 - win.y, 0.04)
        scene.fill[win.rows, win.cols] = np.maximum(scene.fill[win.rows, win.cols], 0.75 * heart)
        scene.density[win.rows, win.cols] += 0.5 * HEART_DENSITY * heart
    scene.heart_extent = (heart_c[0] - hr, heart_c[0] + hr, heart_c[1], hr)

    # Aorta: ascending above the heart, arch, descending along the front of the spine.
    knob_r = 0.022 * a.knob_scale
    arch_top = top + (0.12 - 0.06 * (a.knob_scale - 1.0)) * height
    knob = (0.5 * (front + back) + 0.03, arch_top)
    arch = spline(
        np.array(
            [
                (heart_c[0] + 0.35 * hr, heart_c[1] - 0.85 * hr),
                (front + 0.12, top + 0.3 * height),
                (front + 0.2, arch_top + 0.03),
                knob,
                (back - 0.02, arch_top + 0.08),
                (back - 0.01, top + 0.45 * height),
                (back - 0.005, base),
            ]
        ),
        160,
    )
    scene.aorta_path = arch
    arch_layer = np.zeros_like(scene.fill)
    draw_curve(arch_layer, arch, 1.4 * knob_r, 1.0, profile=lambda p: np.sqrt(np.clip(1 - p * p, 0, 1)))
    np.clip(arch_layer, 0, 1, out=arch_layer)
    scene.fill[:] = np.maximum(scene.fill, 0.2 * arch_layer)
    scene.knob_radius = knob_r

    # Airway and hila.
    vessels = _markings_canvas(scene)
    carina = (0.5 * (front + back) + 0.03, top + 0.33 * height)
    draw_curve(
        scene.lucency,
        bezier(np.array([(carina[0] - 0.06, 0.0), (carina[0] - 0.02, top), carina])),
        1.6 * cm,
        TRACHEA_LUCENCY,
    )
    hilum = (carina[0] + 0.01, carina[1] + 0.1 * height)
    for side in SIDES:
        win = scene.window_around(*hilum, 0.07)
        if win is not None:
            h = blob(win, *hilum, 1.8 * cm, 2.2 * cm, softness=0.6, lobes=random_lobes(rng, 0.15))
            scene.fill[win.rows, win.cols] = np.maximum(scene.fill[win.rows, win.cols], 0.3 * h)
        _vessel_tree(
            vessels,
            rng,
            hilum,
            1 if side == LEFT else -1,
            0.3 * a.lung_width * 1.4,
            0.45 * cm,
            (-80, 80),
            a.marking_gain,
        )
    _set_markings(scene, vessels)

    # Sternum and faint posterior ribs.
    sternum_x = front - 0.012
    sternum = np.array(
        [
            (sternum_x + 0.01, top + 0.02),
            (sternum_x - 0.005, top + 0.3 * height),
            (sternum_x + 0.005, top + 0.62 * height),
        ]
    )
    draw_curve(
        scene.bone,
        bezier(sternum, 40),
        1.2 * cm,
        0.8 * BONE_DENSITY,
        profile=lambda p: 0.5 + 0.5 * np.abs(p) ** 2,
    )
    win = scene.window(0.5 * (front + back), back + 0.04, top - 0.03, base + 0.05)
    if win is not None:
        phase = (win.y - top + 0.25 * (win.x - back)) / pitch
        g = np.mod(phase, 1.0) / 0.35
        band = np.clip(np.minimum(g, 1.0 - g) * 4, 0, 1) * (g < 1)
        fade = smoothstep((win.x - 0.5 * (front + back)) / 0.15)
        scene.bone[win.rows, win.cols] += 0.35 * BONE_DENSITY * band * fade

    stomach = (front + 0.45 * (back - front), base + 0.04)
    if a.stomach_bubble:
        win = scene.window_around(*stomach, 0.07)
        if win is not None:
            bubble = blob(win, *stomach, 2.0 * cm, 1.1 * cm, softness=0.25) * (win.y < stomach[1] + 0.004)
            scene.lucency[win.rows, win.cols] += STOMACH_LUCENCY * bubble
    scene.landmarks.update(
        hilum_right=hilum,
        hilum_left=hilum,
        carina=carina,
        knob=knob,
        heart_centre=heart_c,
        svc_tip=(heart_c[0] + 0.3 * hr, heart_c[1] - 1.05 * hr),
        rv_apex=(heart_c[0] - 0.5 * hr, heart_c[1] + 0.5 * hr),
        neck_right=(carina[0] - 0.1, 0.0),
        neck_left=(carina[0] - 0.08, 0.0),
        subclavian_right=(front + 0.08, top + 0.02),
        subclavian_left=(front + 0.1, top + 0.03),
        stomach=stomach,
        gej=(carina[0] + 0.02, base + 0.01),
        sternum_top=(sternum_x + 0.01, top + 0.04),
        sternum_bottom=(sternum_x + 0.004, top + 0.6 * height),
        trachea_top=(carina[0] - 0.06, 0.02),
    )
