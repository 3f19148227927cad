"""The 30 cxr-lt-30 findings of PadChest-Synth: one drawing function per class.

Each class has a distinct visual signature, drawn with random size, contrast and position so that none is
trivial (rare classes may be subtle). "Side" is the patient's side: on frontal views the patient's right lung
is on the image LEFT. Placement follows the row's PadChest localizations when they make sense for the finding
(``loc right/left/bilateral``, ``loc apical/upper/middle/basal/costophrenic``, ``loc hilar``, ...), otherwise the
default below.

============================== ==================================================== ==========================
class                          visual signature                                     where
============================== ==================================================== ==========================
normal                         nothing abnormal                                     -
aortic elongation              aortic knob 1.4-1.9x larger and higher; tortuous     left upper mediastinum
                               descending aorta bulging into the left lung          (image right)
cardiomegaly                   heart widened to a cardiothoracic ratio of 0.56-0.68 heart
                               (normal 0.39-0.49), a little taller
pleural effusion               homogeneous basal opacity with a hazy concave        base; side from locs, else
                               meniscus climbing the chest wall; blunted            R/L/both
                               costophrenic angle, dome hidden
nodule                         1-3 round opacities 0.8-2.8 cm, sharp or fuzzy edge, aerated lung; side/level
                               faint to moderate contrast                           from locs
atelectasis                    plate-like bands 0.3-0.8 cm thick, or a wedge from   lower zone; side from
                               the hilum to the base; volume loss (raised dome,     locs, else L > R
                               mediastinal shift)
pleural thickening             irregular bright band 0.4-1.6 cm inside the chest    lateral wall or apex (loc
                               wall, or an apical cap                               apical)
aortic atheromatosis           thin, dashed, very bright curvilinear calcification  aortic knob (arch top on
                               along the outer wall of the knob                     laterals)
support devices                1-2 of: pacemaker box + leads to RA/RV; NG tube to   upper chest, midline,
                               the stomach; ET tube above the carina; tracheostomy  heart; loc tracheal
                               with flange; chest drain with side holes; valve ring favours airway tubes
alveolar pattern               fluffy confluent airspace opacity (thresholded       lobar or perihilar; locs
                               smooth noise) with branching air bronchograms
fracture                       rib: cortical gap with a stepped fragment, or a      lateral rib arcs; clavicle
                               fusiform callus; clavicle: gap with a displaced      shaft (loc clavicle)
                               lateral fragment
hernia                         round retrocardiac opacity 5-9 cm with a gas cap     behind the heart, above
                               over a flat air-fluid level                          the left dome
emphysema                      large hyperlucent lungs, flat low diaphragms, narrow both lungs; bullae upper
                               heart, pruned upper-zone vessels, 1-4 thin-walled    zones
                               bullae
azygos lobe                    thin curved fissure, convex laterally, from the apex right upper lung
                               to a teardrop at the right tracheobronchial angle
hydropneumothorax              pneumothorax (dark rim, no markings, pleural line)   one side; locs
                               plus dense fluid under a sharp, perfectly flat level
kyphosis                       lateral: exaggerated thoracic curve, wedged          spine
                               vertebrae; frontal (subtle): lower apices, high
                               clavicles, flatter ribs
mass                           lobulated opacity 3.2-8 cm in a lung, or a           lung (locs) or mediastinum
                               mediastinal mass bulging into one lung               (loc mediastinum)
pneumothorax                   lung collapsed towards the hilum: dark               apex + lateral wall; side
                               apical/lateral pleural air without markings, thin    from locs, else R > L
                               bright visceral pleural line
subcutaneous emphysema         dark feathery streaks of air along the muscle planes lateral chest wall;
                               of the chest wall and pectorals                      side(s) from locs
pneumoperitoneo                dark crescent of free air just under the             right dome (30 %: both)
                               hemidiaphragm
vascular hilar enlargement     large lobulated hila: thick vertical arterial trunk  hila, usually both; side
                               with plump lobar arteries, prominent proximal        from locs
                               vessels
vertebral degenerative changes beak-like osteophytes at vertebral body corners      mid/lower thoracic spine
                               (lateral on frontal, anterior on lateral), sclerotic
                               endplates
hyperinflated lung             taller lungs showing more ribs, low flat diaphragms, both lungs
                               narrow heart; vessels normal, no bullae
interstitial pattern           fine reticular net of thin lines (zero crossings of  basal or diffuse, usually
                               band-limited noise) over a faint haze                both
central venous catheter        single thin radiopaque line from the neck (jugular)  right (or left)
                               or under the clavicle (subclavian) to the cavo-      neck/subclavian to the SVC
                               atrial junction; no box, no leads into the ventricle
hypoexpansion                  short lungs with high domes, crowded denser vessels, both lungs
                               less air
bronchiectasis                 clusters of thick-walled ring shadows and tram-track lower zones; locs
                               parallel lines pointing to the hilum
hemidiaphragm elevation        one dome 2.7-4.5 cm higher than the other            side from locs, else R > L
sternotomy                     vertical row of 5-8 bright twisted wire loops (edge- sternum (midline)
                               on dashes on laterals)
calcified densities            2-8 small (0.3-0.8 cm), very bright, sharp dots      lungs or hila (loc hilar)
============================== ==================================================== ==========================

Two registries drive the renderer: :data:`ANATOMY_EFFECTS` (findings that change the normal anatomy before it
is drawn: heart size, lung volume, diaphragm, spine) and :data:`FINDING_RENDERERS` (every class; draws on the
scene's layers, a no-op for purely anatomical findings). :data:`DRAW_ORDER` puts anatomy-level findings
first, then opacities, lucencies, bone and finally devices on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trcgl.data.synth.anatomy import LEFT, RIGHT, SIDES, Anatomy, Scene, View, rasterize_lung
from trcgl.data.synth.draw import (
    Window,
    bezier,
    blob,
    draw_curve,
    random_lobes,
    smooth_noise,
    smoothstep,
    soft_inside,
    spline,
)

NORMAL = "normal"
CLASS_NAMES: tuple[str, ...] = (
    "normal",
    "aortic elongation",
    "cardiomegaly",
    "pleural effusion",
    "nodule",
    "atelectasis",
    "pleural thickening",
    "aortic atheromatosis",
    "support devices",
    "alveolar pattern",
    "fracture",
    "hernia",
    "emphysema",
    "azygos lobe",
    "hydropneumothorax",
    "kyphosis",
    "mass",
    "pneumothorax",
    "subcutaneous emphysema",
    "pneumoperitoneo",
    "vascular hilar enlargement",
    "vertebral degenerative changes",
    "hyperinflated lung",
    "interstitial pattern",
    "central venous catheter",
    "hypoexpansion",
    "bronchiectasis",
    "hemidiaphragm elevation",
    "sternotomy",
    "calcified densities",
)

# Densities of drawn materials (same units as anatomy: the body centre is ~1).
METAL = 0.9
WIRE = 0.75
CALCIUM = 0.45
TUBE = 0.22
FLUID = 0.03  # extra density of fluid over soft tissue

# Vertical bands of a lung (fractions of its height, 0 = apex).
LEVEL_BANDS: dict[str, tuple[float, float]] = {
    "apical": (0.02, 0.22),
    "upper": (0.08, 0.4),
    "middle": (0.35, 0.65),
    "basal": (0.6, 0.92),
}
_LEVEL_WORDS: dict[str, str] = {
    "apical": "apical",
    "apex": "apical",
    "upper": "upper",
    "suprahilar": "upper",
    "superior": "upper",
    "middle": "middle",
    "lingula": "middle",
    "basal": "basal",
    "lower": "basal",
    "costophrenic": "basal",
    "infrahilar": "basal",
    "cardiophrenic": "basal",
    "retrocardiac": "basal",
    "diaphragm": "basal",
}


# --------------------------------------------------------------------------------------------------------------
# Localizations
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the row's localizations put its findings.

    Attributes:
        sides: patient sides named (empty when unspecified); both when "bilateral".
        levels: lung levels named ("apical", "upper", "middle", "basal").
        words: every word of every localization (for hilar, tracheal, mediastinum, clavicle, ...).
    """

    sides: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    words: frozenset[str] = frozenset()

    def has(self, *words: str) -> bool:
        """Whether any of the words appears in the localizations."""
        return any(w in self.words for w in words)


def parse_localizations(localizations: Sequence[str]) -> Placement:
    """Parse raw PadChest localization strings ("loc left", "loc right upper lobe", ...).

    Args:
        localizations: raw strings; case, stray spaces and the "loc" prefix are tolerated.

    Returns:
        The sides, levels and words they name.
    """
    words: set[str] = set()
    for item in localizations:
        words.update(str(item).strip().lower().replace("_", " ").split())
    words.discard("loc")
    sides: list[str] = []
    if "bilateral" in words or ("right" in words and "left" in words):
        sides = [RIGHT, LEFT]
    elif "right" in words:
        sides = [RIGHT]
    elif "left" in words:
        sides = [LEFT]
    levels = sorted({_LEVEL_WORDS[w] for w in words if w in _LEVEL_WORDS})
    return Placement(tuple(sides), tuple(levels), frozenset(words))


def choose_sides(
    rng: np.random.Generator, where: Placement, p_bilateral: float = 0.2, p_right: float = 0.5
) -> tuple[str, ...]:
    """Sides to draw on: the localizations' when given, else random."""
    if where.sides:
        return where.sides
    if rng.random() < p_bilateral:
        return SIDES
    return (RIGHT,) if rng.random() < p_right else (LEFT,)


def choose_band(rng: np.random.Generator, where: Placement, weights: dict[str, float]) -> tuple[float, float]:
    """Vertical band of a lung: one of the localizations' levels when given, else drawn from ``weights``."""
    if where.levels:
        return LEVEL_BANDS[where.levels[int(rng.integers(len(where.levels)))]]
    names = list(weights)
    p = np.asarray([weights[n] for n in names], np.float64)
    return LEVEL_BANDS[names[int(rng.choice(len(names), p=p / p.sum()))]]


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def _add_fill(scene: Scene, win: Window, field: np.ndarray) -> None:
    """Replace lung air by fluid/tissue where ``field`` (window-shaped, 0..1) says so."""
    np.maximum(scene.fill[win.rows, win.cols], field, out=scene.fill[win.rows, win.cols])


def _lung_inside(scene: Scene, side: str, win: Window) -> np.ndarray:
    """(h, w) 0..1 inside one lung (its air fraction rescaled so the tapered edge still counts as inside)."""
    return np.clip(scene.lungs[side][win.rows, win.cols] * 2.5, 0.0, 1.0)


def _curve_layer(scene: Scene, points: np.ndarray, width: float, value: float = 1.0, **kwargs) -> np.ndarray:
    """A fresh (S, S) layer with one curve drawn into it."""
    layer = np.zeros((scene.size, scene.size), np.float32)
    draw_curve(layer, points, width, value, **kwargs)
    return layer


def _round_profile(p: np.ndarray) -> np.ndarray:
    """Across-line profile of a solid round tube (chord length)."""
    return np.sqrt(np.clip(1.0 - p * p, 0.0, 1.0))


def _tube_profile(p: np.ndarray) -> np.ndarray:
    """Across-line profile of a hollow tube: bright walls, fainter lumen."""
    return 0.35 + 0.65 * np.abs(p) ** 4


def _side_frame(scene: Scene, side: str) -> tuple[float, float, float, float, float, float]:
    """(y0, y1, x_lateral, x_medial, height, width) of one drawn lung."""
    y0, y1, x0, x1 = scene.lung_boxes[side]
    lateral, medial = (x1, x0) if scene.outward[side] > 0 else (x0, x1)
    return y0, y1, lateral, medial, y1 - y0, x1 - x0


def _collapse(scene: Scene, side: str, keep_lateral: float, keep_top: float) -> tuple[np.ndarray, np.ndarray]:
    """Collapse one lung towards its hilum/base, leaving pleural air with no lung markings (in place).

    Args:
        scene: the scene.
        side: patient side.
        keep_lateral: fraction of the lung's width kept (1 = no collapse).
        keep_top: fraction of its height kept (smaller = bigger apical rim).

    Returns:
        rim (S, S) 0..1 pleural air and line (S, S) visceral pleural line.
    """
    y0, y1, x0, x1 = scene.lung_boxes[side]
    outward = scene.outward[side]
    anchor_x = x0 if outward > 0 else x1  # the medial edge stays on the mediastinum
    new_x0 = anchor_x + keep_lateral * (x0 - anchor_x)
    new_x1 = anchor_x + keep_lateral * (x1 - anchor_x)
    new_y0 = y1 + keep_top * (y0 - y1)
    collapsed = rasterize_lung(scene.size, scene.anatomy, side, (new_y0, y1, min(new_x0, new_x1), max(new_x0, new_x1)))
    inside = np.clip(scene.lungs[side] * 2.5, 0.0, 1.0)
    rim = inside * (1.0 - collapsed)
    line = 4.0 * collapsed * (1.0 - collapsed) * inside
    scene.markings *= 1.0 - rim
    np.maximum(scene.lungs[side], 0.95 * rim, out=scene.lungs[side])  # the pleural space is all air
    scene.density += 0.12 * line
    return rim, line


# --------------------------------------------------------------------------------------------------------------
# Anatomy effects (edit the geometry before the normal anatomy is drawn)
# --------------------------------------------------------------------------------------------------------------


def effect_aortic_elongation(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Enlarge and raise the aortic knob; make the descending aorta tortuous."""
    anatomy.knob_scale = rng.uniform(1.4, 1.9)
    anatomy.aorta_tortuosity = rng.uniform(0.5, 1.0)


def effect_cardiomegaly(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Widen the heart to a cardiothoracic ratio of 0.56-0.68 (portable films magnify a little more)."""
    anatomy.ctr = rng.uniform(0.56, 0.68) + (0.02 if anatomy.supine else 0.0)
    anatomy.heart_height *= rng.uniform(1.05, 1.2)


def effect_atelectasis(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Volume loss: raise the dome on the collapsed side and pull the mediastinum towards it."""
    sides = choose_sides(rng, where, p_bilateral=0.2, p_right=0.45)
    kind = "plate" if rng.random() < 0.6 else "wedge"
    scale = 0.5 if len(sides) == 2 else 1.0
    for side in sides:
        anatomy.dome_lift[side] += scale * rng.uniform(0.03, 0.07)
        if len(sides) == 1:
            towards = -1 if side == RIGHT else 1  # patient right is image left on frontal views
            anatomy.mediastinal_shift += towards * rng.uniform(0.005, 0.015)
    anatomy.choices["atelectasis"] = {"sides": sides, "kind": kind}


def effect_emphysema(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Over-inflated, hyperlucent lungs with flat diaphragms, a narrow heart and sparse vessels."""
    anatomy.inflation *= rng.uniform(1.08, 1.18)
    anatomy.diaphragm_flattening = max(anatomy.diaphragm_flattening, rng.uniform(0.65, 1.0))
    anatomy.air_gain *= rng.uniform(1.08, 1.15)
    anatomy.marking_gain *= rng.uniform(0.3, 0.5)
    anatomy.ctr *= rng.uniform(0.85, 0.95)


def effect_kyphosis(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Exaggerated thoracic curve; on frontal views the apices shorten and the ribs flatten."""
    anatomy.kyphosis = rng.uniform(0.5, 1.0)
    if anatomy.view is View.FRONTAL:
        anatomy.apex_drop = 0.4 * anatomy.rib_spacing * anatomy.kyphosis


def effect_hyperinflated_lung(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Taller, slightly wider lungs with low flat diaphragms and a narrow heart (vessels unchanged)."""
    anatomy.inflation *= rng.uniform(1.12, 1.22)
    anatomy.diaphragm_flattening = max(anatomy.diaphragm_flattening, rng.uniform(0.5, 0.85))
    anatomy.air_gain *= rng.uniform(1.03, 1.07)
    anatomy.ctr *= rng.uniform(0.86, 0.94)


def effect_hypoexpansion(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Short lungs with high domes, crowded vessels and less air."""
    anatomy.inflation *= rng.uniform(0.74, 0.84)
    anatomy.marking_gain *= rng.uniform(1.3, 1.6)
    anatomy.air_gain *= rng.uniform(0.86, 0.93)
    anatomy.ctr = min(anatomy.ctr * rng.uniform(1.0, 1.06), 0.52)


def effect_hemidiaphragm_elevation(anatomy: Anatomy, rng: np.random.Generator, where: Placement) -> None:
    """Raise one hemidiaphragm by 2.7-4.5 cm (side from the localizations, else right slightly favoured)."""
    sides = [s for s in where.sides if s in SIDES]
    side = sides[int(rng.integers(len(sides)))] if sides else (RIGHT if rng.random() < 0.55 else LEFT)
    lift_cm = rng.uniform(2.7, 4.5)
    anatomy.dome_lift[side] += lift_cm * anatomy.cm / anatomy.lung_height
    anatomy.choices["hemidiaphragm elevation"] = {"side": side}


# --------------------------------------------------------------------------------------------------------------
# Findings drawn on the scene
# --------------------------------------------------------------------------------------------------------------


def draw_nothing(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """No drawing: normal, or a finding that is entirely an anatomy effect."""


def draw_aortic_elongation(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Tortuous descending aorta: a soft-tissue tube bulging into the left lung below the enlarged knob."""
    if scene.view is View.LATERAL:
        return  # the enlarged arch is drawn by the anatomy (knob_scale)
    a = scene.anatomy
    kx, ky = scene.landmarks["knob"]
    r = scene.knob_radius
    bulge = (1.0 + 2.0 * a.aorta_tortuosity) * scene.cm
    dome = scene.lung_boxes[LEFT][1]
    ctrl = np.array(
        [
            (kx, ky + 0.5 * r),
            (kx + bulge, ky + 0.3 * (dome - ky)),
            (kx - 0.3 * bulge, ky + 0.6 * (dome - ky)),
            (kx + 0.5 * bulge, dome),
        ]
    )
    tube = _curve_layer(scene, bezier(ctrl, 96), 2.4 * scene.cm, 1.0, profile=_round_profile)
    np.clip(tube, 0.0, 1.0, out=tube)
    np.maximum(scene.fill, 0.85 * tube, out=scene.fill)
    scene.density += 0.03 * tube


def draw_pleural_effusion(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Basal homogeneous opacity with a concave meniscus climbing the chest wall, blunting the angle."""
    cm = scene.cm
    for side in choose_sides(rng, where, p_bilateral=0.25, p_right=0.55):
        y0, y1, lateral, medial, height, width = _side_frame(scene, side)
        depth = rng.uniform(0.08, 0.4) * height  # fluid height at the medial side
        rise = rng.uniform(0.4, 1.0) * depth + rng.uniform(1.0, 2.5) * cm  # extra climb along the chest wall
        win = scene.window(
            min(lateral, medial) - 0.03, max(lateral, medial) + 0.02, y1 - depth - rise - 0.05, y1 + 0.06
        )
        if win is None:
            continue
        u = np.clip(np.abs(win.x - lateral) / width, 0.0, 1.0)  # 0 at the chest wall, 1 at the mediastinum
        surface = y1 - depth - rise * (1.0 - u) ** 2.5
        fluid = soft_inside(win.y - surface, rng.uniform(1.0, 2.5) * cm)
        _add_fill(scene, win, rng.uniform(0.85, 1.0) * fluid)
        scene.density[win.rows, win.cols] += FLUID * fluid * _lung_inside(scene, side, win)


def draw_nodule(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """One to three round opacities under 3 cm, sharp or fuzzy."""
    count = int(rng.choice([1, 2, 3], p=[0.75, 0.2, 0.05]))
    sides = choose_sides(rng, where, p_bilateral=0.1)
    for i in range(count):
        side = sides[i % len(sides)]
        band = choose_band(rng, where, {"upper": 0.4, "middle": 0.35, "basal": 0.25})
        radius = 0.5 * rng.uniform(0.8, 2.8) * scene.cm
        cx, cy = scene.sample_lung_point(rng, side, band, margin=radius)
        win = scene.window_around(cx, cy, 2.0 * radius)
        if win is None:
            continue
        softness = rng.choice([0.08, 0.2, 0.45])
        field = blob(
            win,
            cx,
            cy,
            radius,
            radius * rng.uniform(0.85, 1.15),
            angle=rng.uniform(0, math.pi),
            softness=softness,
            lobes=random_lobes(rng, 0.06),
        )
        contrast = rng.uniform(0.25, 0.45) + 0.15 * radius / (1.4 * scene.cm)  # bigger nodules are denser
        _add_fill(scene, win, contrast * field)


def draw_atelectasis(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Plate-like basal bands or a hilum-to-base wedge (volume loss was applied as an anatomy effect)."""
    choice = scene.anatomy.choices.get("atelectasis", {"sides": (LEFT,), "kind": "plate"})
    cm = scene.cm
    for side in choice["sides"]:
        if choice["kind"] == "plate":
            for _ in range(int(rng.integers(1, 4))):
                cx, cy = scene.sample_lung_point(rng, side, (0.55, 0.88), margin=1.5 * cm)
                length = rng.uniform(3.0, 7.0) * cm
                angle = rng.uniform(-0.3, 0.3)
                d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
                sag = np.array([0.0, rng.uniform(-0.4, 0.4) * cm])
                pts = bezier(np.array([(cx, cy) - d, (cx, cy) + sag, (cx, cy) + d]), 32)
                band = _curve_layer(scene, pts, rng.uniform(0.3, 0.8) * cm, 1.0, profile=_round_profile)
                np.clip(band, 0.0, 1.0, out=band)
                np.maximum(scene.fill, rng.uniform(0.4, 0.7) * band, out=scene.fill)
        else:
            y0, y1, lateral, medial, height, width = _side_frame(scene, side)
            hx, hy = scene.landmarks[f"hilum_{side}"]
            base_medial = medial + (lateral - medial) * 0.05
            base_lateral = medial + (lateral - medial) * rng.uniform(0.35, 0.55)
            dome = scene.dome_y(side, base_lateral)
            tri = np.array([(hx, hy + 0.02), (base_medial, dome + 0.01), (base_lateral, dome + 0.01)])
            win = scene.window(tri[:, 0].min() - 0.02, tri[:, 0].max() + 0.02, tri[:, 1].min() - 0.02, dome + 0.03)
            if win is None:
                continue
            field = _triangle(win, tri, 0.6 * cm)
            _add_fill(scene, win, rng.uniform(0.5, 0.8) * field)


def _triangle(win: Window, tri: np.ndarray, softness: float) -> np.ndarray:
    """Soft-edged filled triangle (vertices (3, 2)) on a window."""
    centroid = tri.mean(axis=0)
    inside = None
    for i in range(3):
        p, q = tri[i], tri[(i + 1) % 3]
        normal = np.array([q[1] - p[1], p[0] - q[0]])
        normal /= np.linalg.norm(normal) + 1e-12
        if np.dot(centroid - p, normal) < 0:
            normal = -normal
        signed = (win.x - p[0]) * normal[0] + (win.y - p[1]) * normal[1]
        inside = signed if inside is None else np.minimum(inside, signed)
    return soft_inside(inside, softness)


def _wavy(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
    """(n,) smooth random profile around 1 (irregular thickness along a band)."""
    return 1.0 + amount * np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, 6), rng.standard_normal(6))


def draw_pleural_thickening(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Irregular bright band along the lateral chest wall, or an apical cap."""
    apical = where.has("apical", "apex") or (not where.levels and rng.random() < 0.45)
    cm = scene.cm
    for side in choose_sides(rng, where, p_bilateral=0.3):
        y0, y1, lateral, medial, height, width = _side_frame(scene, side)
        if apical:
            has, top, _ = scene.lung_cols(side)
            cols = np.flatnonzero(has & (top < y0 + 0.2 * height))
            if cols.size == 0:
                continue
            win = scene.window(cols[0] / scene.size, (cols[-1] + 1) / scene.size, y0 - 0.01, y0 + 0.3 * height)
            if win is None:
                continue
            thick = rng.uniform(0.6, 1.6) * cm * np.clip(_wavy(rng, win.x.shape[1], 0.35), 0.2, None)[None, :]
            depth = win.y - top[win.cols][None, :]  # distance below the apex edge
        else:
            has, x_edge = scene.lateral_edge(side)
            start = y0 + rng.uniform(0.2, 0.5) * height
            stop = min(y1 - 0.08 * height, start + rng.uniform(5.0, 12.0) * cm)
            win = scene.window(min(lateral, medial) - 0.01, max(lateral, medial) + 0.01, start, stop)
            if win is None:
                continue
            taper = np.sqrt(np.clip(np.sin(np.pi * np.clip((win.y - start) / (stop - start), 0, 1)), 0, 1))
            thick = rng.uniform(0.4, 1.2) * cm * np.clip(_wavy(rng, win.y.shape[0], 0.4), 0.2, None)[:, None] * taper
            depth = (x_edge[win.rows][:, None] - win.x) * scene.outward[side]  # distance inside the chest wall
        band = soft_inside(depth + 1.0 / scene.size, 1.5 / scene.size) * soft_inside(thick - depth, 0.2 * cm)
        band *= _lung_inside(scene, side, win)
        _add_fill(scene, win, 0.95 * band)
        scene.density[win.rows, win.cols] += 0.04 * band


def draw_aortic_atheromatosis(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Dashed thin calcified arc along the outer wall of the aortic knob (top of the arch on laterals)."""
    r = scene.knob_radius
    if scene.view is View.LATERAL and scene.aorta_path is not None:
        path = scene.aorta_path
        i0, i1 = int(len(path) * rng.uniform(0.25, 0.4)), int(len(path) * rng.uniform(0.55, 0.7))
        seg = path[i0:i1]
        tangent = np.gradient(seg, axis=0)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # points up/outwards on the arch
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        pts = seg + 0.7 * r * normal
    else:
        kx, ky = scene.landmarks["knob"]
        theta = np.linspace(rng.uniform(-1.5, -0.9), rng.uniform(0.6, 1.3), 48)  # lateral (image right) wall
        pts = np.stack([kx + 0.95 * r * np.cos(theta), ky + 1.1 * r * np.sin(theta)], axis=1)
    dashes = rng.uniform(3, 7)
    phase = rng.uniform(0, 2 * math.pi)
    value = rng.uniform(0.7, 1.0) * CALCIUM

    def dashed(t: np.ndarray) -> np.ndarray:
        return value * (np.sin(2 * np.pi * dashes * t + phase) > -0.4)

    draw_curve(scene.density, pts, rng.uniform(0.2, 0.35) * scene.cm, dashed)


def draw_support_devices(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """One or two devices: pacemaker, NG tube, ET tube, tracheostomy, chest drain or valve prosthesis."""
    devices = {
        "pacemaker": _pacemaker,
        "ng_tube": _ng_tube,
        "et_tube": _et_tube,
        "tracheostomy": _tracheostomy,
        "chest_drain": _chest_drain,
        "valve": _valve,
    }
    weights = np.array([0.34, 0.26, 0.14, 0.1, 0.1, 0.06])
    if where.has("tracheal", "trachea"):
        weights[2] *= 3
        weights[3] *= 3
    names = list(devices)
    count = 2 if rng.random() < 0.25 else 1
    for i in rng.choice(len(names), size=count, replace=False, p=weights / weights.sum()):
        devices[names[int(i)]](scene, rng)


def _pacemaker(scene: Scene, rng: np.random.Generator) -> None:
    """Generator box under the clavicle (usually the left) with leads to the right atrium and ventricle."""
    cm = scene.cm
    side = LEFT if rng.random() < 0.8 else RIGHT
    sx, sy = scene.landmarks[f"subclavian_{side}"]
    if scene.view is View.LATERAL:
        box = (sx + rng.uniform(-0.02, 0.02), sy + rng.uniform(0.0, 0.04))
    else:
        box = (sx + scene.outward[side] * rng.uniform(-0.02, 0.03), sy + rng.uniform(0.01, 0.05))
    rx, ry = rng.uniform(2.0, 2.6) * cm, rng.uniform(1.6, 2.1) * cm
    angle = rng.uniform(-0.4, 0.4)
    win = scene.window_around(*box, 1.6 * max(rx, ry))
    if win is not None:
        can = blob(win, *box, rx, ry, angle=angle, softness=0.04, power=4.0)
        header = blob(win, box[0], box[1] - ry * 0.9, 0.7 * rx, 0.35 * ry, angle=angle, softness=0.1, power=4.0)
        scene.density[win.rows, win.cols] += METAL * can + 0.35 * METAL * header * (1.0 - can)
    svc_x, svc_y = scene.landmarks["svc_tip"]
    rv = scene.landmarks["rv_apex"]
    # Leads: medially under the clavicle, down the superior vena cava, through the right atrium.
    vein_entry = (0.5 * (box[0] + svc_x), box[1] - 0.015)
    ra_mid = (svc_x + 0.005, svc_y + 0.06)
    leads = [np.array([box, vein_entry, (svc_x + 0.01, svc_y - 0.07), (svc_x, svc_y), ra_mid, rv])]
    if rng.random() < 0.6:  # dual chamber: atrial lead curling up into the appendage
        ra = (svc_x + 0.025, svc_y + 0.02)
        leads.append(np.array([box, vein_entry, (svc_x + 0.006, svc_y - 0.05), (svc_x - 0.004, ra_mid[1]), ra]))
    width = rng.uniform(0.2, 0.3) * cm
    for ctrl in leads:
        ctrl = ctrl + rng.normal(0.0, 0.003, ctrl.shape)
        pts = spline(ctrl, 128)
        draw_curve(scene.density, pts, width, 0.7 * METAL)
        tip = pts[-1]
        tip_win = scene.window_around(*tip, 1.0 * cm)
        if tip_win is not None:
            scene.density[tip_win.rows, tip_win.cols] += 0.8 * METAL * blob(tip_win, *tip, 0.3 * cm, 0.3 * cm)


def _ng_tube(scene: Scene, rng: np.random.Generator) -> None:
    """Nasogastric tube down the oesophagus, through the hiatus, tip in the stomach."""
    cm = scene.cm
    tx, _ = scene.landmarks["trachea_top"]
    carina = scene.landmarks["carina"]
    gej = scene.landmarks["gej"]
    stomach = scene.landmarks["stomach"]
    tip = (stomach[0] + rng.uniform(-1.5, 1.5) * cm, stomach[1] + rng.uniform(0.5, 3.0) * cm)
    ctrl = np.array([(tx + 0.004, 0.0), (carina[0] + 0.012, carina[1]), (gej[0], gej[1] - 0.03), gej, tip])
    pts = bezier(ctrl + rng.normal(0.0, 0.003, ctrl.shape), 128)
    draw_curve(scene.density, pts, rng.uniform(0.35, 0.5) * cm, TUBE, profile=_tube_profile)
    draw_curve(scene.density, pts, 0.1 * cm, 1.2 * TUBE)  # radiopaque stripe


def _et_tube(scene: Scene, rng: np.random.Generator) -> None:
    """Endotracheal tube in the trachea, tip 3-6 cm above the carina."""
    cm = scene.cm
    tx, ty = scene.landmarks["trachea_top"]
    cx, cy = scene.landmarks["carina"]
    tip = (cx - 0.003, cy - rng.uniform(3.0, 6.0) * cm)
    pts = bezier(np.array([(tx, 0.0), (0.5 * (tx + tip[0]), 0.5 * tip[1]), tip]), 64)
    draw_curve(scene.density, pts, rng.uniform(0.7, 0.9) * cm, 0.6 * TUBE, profile=_tube_profile)
    draw_curve(scene.density, pts, 0.15 * cm, 2.0 * TUBE)


def _tracheostomy(scene: Scene, rng: np.random.Generator) -> None:
    """Short curved cannula in the upper trachea with a horizontal flange at the neck."""
    cm = scene.cm
    tx, _ = scene.landmarks["trachea_top"]
    cx, cy = scene.landmarks["carina"]
    top = max(0.02, cy - rng.uniform(9.0, 12.0) * cm)
    bottom = cy - rng.uniform(3.0, 5.0) * cm
    pts = bezier(np.array([(tx, top), (tx + 0.3 * cm, 0.5 * (top + bottom)), (cx, bottom)]), 48)
    draw_curve(scene.density, pts, 1.0 * cm, 0.9 * TUBE, profile=_tube_profile)
    flange = np.array([(tx - 2.5 * cm, top), (tx + 2.5 * cm, top)])
    draw_curve(scene.density, flange, 0.4 * cm, 2.0 * TUBE)


def _chest_drain(scene: Scene, rng: np.random.Generator) -> None:
    """Pleural drain entering the lateral chest wall low, running up towards the apex, with side holes."""
    cm = scene.cm
    side = RIGHT if rng.random() < 0.5 else LEFT
    y0, y1, lateral, medial, height, width = _side_frame(scene, side)
    o = scene.outward[side] if scene.view is View.FRONTAL else 1
    entry = (lateral + o * 0.04, y0 + rng.uniform(0.55, 0.75) * height)
    inner = (lateral - o * 0.2 * width, y0 + 0.45 * height)
    tip = (lateral - o * rng.uniform(0.25, 0.5) * width, y0 + rng.uniform(0.1, 0.25) * height)
    pts = bezier(np.array([entry, (lateral - o * 0.05 * width, entry[1] - 0.02), inner, tip]), 96)
    holes = rng.uniform(3, 5)

    def stripe(t: np.ndarray) -> np.ndarray:
        return 1.5 * TUBE * np.where(t > 0.7, np.sin(2 * np.pi * holes * t) > -0.2, 1.0)

    draw_curve(scene.density, pts, rng.uniform(0.5, 0.8) * cm, 0.8 * TUBE, profile=_tube_profile)
    draw_curve(scene.density, pts, 0.12 * cm, stripe)


def _valve(scene: Scene, rng: np.random.Generator) -> None:
    """Prosthetic heart valve: a bright ring with struts over the heart."""
    cm = scene.cm
    hx, hy = scene.landmarks["heart_centre"]
    cx, cy = hx + rng.uniform(-1.5, 1.0) * cm, hy + rng.uniform(-1.5, 1.0) * cm
    rx, ry = rng.uniform(1.1, 1.5) * cm, rng.uniform(0.5, 0.9) * cm
    tilt = rng.uniform(-0.8, 0.8)
    theta = np.linspace(0, 2 * np.pi, 96)
    c, s = math.cos(tilt), math.sin(tilt)
    ex, ey = rx * np.cos(theta), ry * np.sin(theta)
    ring = np.stack([cx + ex * c - ey * s, cy + ex * s + ey * c], axis=1)
    draw_curve(scene.density, ring, 0.3 * cm, METAL)
    for k in range(3):
        p = ring[k * 32]
        strut = np.array([p, (p[0] + 0.6 * cm * s, p[1] - 0.6 * cm * c)])
        draw_curve(scene.density, strut, 0.15 * cm, 0.8 * METAL)


def draw_alveolar_pattern(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Fluffy confluent airspace opacity with air bronchograms, lobar or perihilar."""
    cm = scene.cm
    perihilar = where.has("hilar", "perihilar") or rng.random() < 0.25
    for side in choose_sides(rng, where, p_bilateral=0.35):
        y0, y1, lateral, medial, height, width = _side_frame(scene, side)
        if perihilar:
            hx, hy = scene.landmarks[f"hilum_{side}"]
            o = scene.outward[side] if scene.view is View.FRONTAL else 1
            cx, cy = hx + o * rng.uniform(2.0, 4.0) * cm, hy + rng.uniform(-1.0, 2.0) * cm
        else:
            band = choose_band(rng, where, {"upper": 0.3, "middle": 0.3, "basal": 0.4})
            cx, cy = scene.sample_lung_point(rng, side, band, margin=2.0 * cm)
        rx, ry = rng.uniform(3.0, 6.5) * cm, rng.uniform(3.0, 7.5) * cm
        win = scene.window_around(cx, cy, 2.2 * rx, 2.2 * ry)
        if win is None:
            continue
        h, w = win.y.shape[0], win.x.shape[1]
        envelope = blob(win, cx, cy, rx, ry, softness=0.9, lobes=random_lobes(rng, 0.35))
        texture = smooth_noise(rng, (max(4, h // 6), max(4, w // 6)), (h, w), 1.2)
        opacity = smoothstep((envelope * (0.75 + 0.3 * texture) - 0.15) / 0.75)
        # Air bronchograms: dark branching lines inside the consolidation.
        bronchi = np.zeros((scene.size, scene.size), np.float32)
        hx, hy = scene.landmarks[f"hilum_{side}"]
        for _ in range(int(rng.integers(2, 5))):
            start = (cx + 0.5 * (hx - cx) + rng.normal(0, 0.5) * cm, cy + 0.5 * (hy - cy) + rng.normal(0, 0.8) * cm)
            direction = np.array([cx - hx, cy - hy]) + rng.normal(0, 1.5, 2) * cm
            direction /= np.linalg.norm(direction) + 1e-9
            mid = np.array(start) + direction * rx * 0.5 + rng.normal(0, 0.4, 2) * cm
            end = np.array(start) + direction * rx * rng.uniform(0.8, 1.3)
            draw_curve(bronchi, bezier(np.array([start, mid, end]), 32), 0.2 * cm, lambda t: 1.0 - 0.6 * t)
        opacity *= 1.0 - 0.4 * np.clip(bronchi[win.rows, win.cols], 0.0, 1.0) * smoothstep((opacity - 0.4) / 0.3)
        _add_fill(scene, win, rng.uniform(0.55, 0.92) * opacity)


def draw_fracture(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Rib fracture (cortical gap with a step, or a callus bulge) or a displaced clavicle fracture."""
    cm = scene.cm
    sides = choose_sides(rng, where, p_bilateral=0.0)
    side = sides[int(rng.integers(len(sides)))]
    clavicle = where.has("clavicle") or rng.random() < 0.2
    if scene.view is View.LATERAL or scene.rib_curve is None:
        # Lateral: a callus bulge on a posterior rib arc.
        y0, y1, _, _, height, _ = _side_frame(scene, side)
        back = max(b[3] for b in scene.lung_boxes.values())
        cx, cy = back - rng.uniform(0.0, 0.06), y0 + rng.uniform(0.3, 0.7) * height
        win = scene.window_around(cx, cy, 2.0 * cm)
        if win is not None:
            callus = blob(win, cx, cy, 1.4 * cm, 0.7 * cm, angle=0.4, softness=0.4)
            scene.bone[win.rows, win.cols] += rng.uniform(0.15, 0.25) * callus
        return
    if clavicle and side in scene.clavicles:
        pts = scene.clavicles[side]
        i = int(rng.uniform(0.35, 0.7) * len(pts))
        centre, tangent = pts[i], pts[min(i + 2, len(pts) - 1)] - pts[max(i - 2, 0)]
        _break_bone(scene, rng, centre, tangent, 1.3 * cm, rng.uniform(0.4, 0.9) * cm, lateral_sign=scene.outward[side])
        return
    u = rng.uniform(0.7, 1.0)
    y0, y1, _, _, height, _ = _side_frame(scene, side)
    ribs = [k for k in range(1, 13) if y0 + 0.15 * height < scene.rib_curve(side, k, u)[1] < y1 - 0.1 * height]
    k = int(rng.choice(ribs)) if ribs else 5
    centre = np.array(scene.rib_curve(side, k, u))
    tangent = np.array(scene.rib_curve(side, k, u + 0.02)) - np.array(scene.rib_curve(side, k, u - 0.02))
    if rng.random() < 0.55:  # healed: fusiform callus
        angle = math.atan2(tangent[1], tangent[0])
        win = scene.window_around(*centre, 2.5 * cm)
        if win is not None:
            length = rng.uniform(1.2, 2.0) * cm
            callus = blob(win, *centre, length, 0.75 * scene.rib_height, angle=angle, softness=0.5)
            scene.bone[win.rows, win.cols] += rng.uniform(0.12, 0.2) * callus
    else:
        _break_bone(
            scene,
            rng,
            centre,
            tangent,
            0.8 * scene.rib_height,
            rng.uniform(0.4, 0.7) * scene.rib_height,
            lateral_sign=scene.outward[side],
        )


def _break_bone(
    scene: Scene,
    rng: np.random.Generator,
    centre: np.ndarray,
    tangent: np.ndarray,
    reach: float,
    step: float,
    lateral_sign: int,
) -> None:
    """Cut a bone across at ``centre`` (dark gap) and shift the lateral fragment by ``step`` (downwards)."""
    cm = scene.cm
    t = tangent / (np.linalg.norm(tangent) + 1e-12)
    if t[0] * lateral_sign < 0:
        t = -t  # t points to the lateral fragment
    win = scene.window_around(*centre, 2.5 * cm)
    if win is None:
        return
    along = (win.x - centre[0]) * t[0] + (win.y - centre[1]) * t[1]
    across = -(win.x - centre[0]) * t[1] + (win.y - centre[1]) * t[0]
    near = soft_inside(reach - np.abs(across), 0.2 * cm)
    region = scene.bone[win.rows, win.cols]
    shift_px = max(1, int(round(step * scene.size)))
    shifted = np.roll(region, shift_px, axis=0)
    lateral = soft_inside(along, 1.5 / scene.size) * near * soft_inside(2.0 * cm - along, 0.8 * cm)
    broken = region * (1.0 - lateral) + shifted * lateral
    gap = np.exp(-((along / (rng.uniform(0.1, 0.2) * cm + 0.8 / scene.size)) ** 2)) * near
    scene.bone[win.rows, win.cols] = broken * (1.0 - 0.9 * gap)


def draw_hernia(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Hiatal hernia: round retrocardiac opacity with a gas cap above a flat air-fluid level."""
    cm = scene.cm
    r = rng.uniform(2.5, 4.5) * cm
    if scene.view is View.LATERAL:
        x_right = scene.heart_extent[1]
        base = max(b[1] for b in scene.lung_boxes.values())
        cx, cy = x_right + 0.4 * r, base - 0.6 * r
    else:
        mx = scene.anatomy.midline + scene.anatomy.mediastinal_shift
        cx = mx + rng.uniform(0.0, 0.04)
        cy = scene.dome_y(LEFT, cx + 0.04) - rng.uniform(0.3, 0.8) * r
    win = scene.window_around(cx, cy, 1.4 * r)
    if win is None:
        return
    sac = blob(win, cx, cy, r, r * rng.uniform(0.8, 1.0), softness=0.12, lobes=random_lobes(rng, 0.05))
    _add_fill(scene, win, 0.9 * sac)
    scene.density[win.rows, win.cols] += 0.06 * sac
    level = cy + rng.uniform(-0.4, 0.2) * r
    gas = blob(win, cx, cy, 0.85 * r, 0.85 * r, softness=0.15) * soft_inside(level - win.y, 1.5 / scene.size)
    scene.lucency[win.rows, win.cols] += rng.uniform(0.15, 0.25) * gas


def draw_emphysema(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Upper-zone vessel pruning and 1-4 thin-walled bullae (lung size/diaphragm come from the effect)."""
    cm = scene.cm
    top = min(b[0] for b in scene.lung_boxes.values())
    bottom = max(b[1] for b in scene.lung_boxes.values())
    upper = 1.0 - smoothstep((scene.y - top) / (0.7 * (bottom - top)))  # (S, 1) 1 at the apex
    scene.markings[:] = 1.0 + (scene.markings - 1.0) * (1.0 - 0.7 * upper)
    for _ in range(int(rng.integers(1, 5))):
        side = RIGHT if rng.random() < 0.5 else LEFT
        r = rng.uniform(1.2, 3.5) * cm
        cx, cy = scene.sample_lung_point(rng, side, (0.02, 0.45), margin=0.6 * r)
        win = scene.window_around(cx, cy, 1.3 * r)
        if win is None:
            continue
        bulla = blob(win, cx, cy, r, r * rng.uniform(0.7, 1.0), softness=0.12, lobes=random_lobes(rng, 0.08))
        inside = _lung_inside(scene, side, win)
        scene.markings[win.rows, win.cols] *= 1.0 - bulla
        scene.lucency[win.rows, win.cols] += 0.035 * bulla * inside
        wall = 4.0 * bulla * (1.0 - bulla)
        scene.density[win.rows, win.cols] += 0.03 * wall * inside


def draw_azygos_lobe(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Thin curved azygos fissure from the right apex down to a teardrop at the tracheobronchial angle."""
    cm = scene.cm
    y0, y1, lateral, medial, height, width = _side_frame(scene, RIGHT)
    carina = scene.landmarks["carina"]
    o = scene.outward[RIGHT]
    tear = (medial - o * rng.uniform(0.0, 0.8) * cm, carina[1] - rng.uniform(0.5, 2.0) * cm)
    start = (tear[0] + o * rng.uniform(1.5, 3.0) * cm, y0 - 0.01)
    bulge = (tear[0] + o * rng.uniform(2.5, 4.0) * cm, 0.5 * (start[1] + tear[1]))
    pts = bezier(np.array([start, bulge, tear]), 64)
    draw_curve(scene.density, pts, rng.uniform(0.12, 0.2) * cm, rng.uniform(0.3, 0.45))
    win = scene.window_around(*tear, 1.5 * cm)
    if win is not None:
        drop = blob(win, *tear, rng.uniform(0.35, 0.55) * cm, rng.uniform(0.6, 0.9) * cm, softness=0.3)
        _add_fill(scene, win, 0.9 * drop)
        scene.density[win.rows, win.cols] += 0.03 * drop


def draw_hydropneumothorax(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Pneumothorax plus fluid under a sharp, perfectly horizontal air-fluid level."""
    sides = choose_sides(rng, where, p_bilateral=0.0, p_right=0.5)
    side = sides[int(rng.integers(len(sides)))]
    rim, _ = _collapse(scene, side, rng.uniform(0.6, 0.85), rng.uniform(0.55, 0.8))
    y0, y1, lateral, medial, height, width = _side_frame(scene, side)
    level = y1 - rng.uniform(0.18, 0.38) * height
    win = scene.window(min(lateral, medial) - 0.02, max(lateral, medial) + 0.02, level - 0.01, y1 + 0.06)
    if win is None:
        return
    fluid = soft_inside(win.y - level, 1.5 / scene.size) * np.ones_like(win.x)
    _add_fill(scene, win, 0.97 * fluid)
    scene.density[win.rows, win.cols] += FLUID * fluid * _lung_inside(scene, side, win)


def draw_mass(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Lobulated opacity over 3 cm in a lung, or a mediastinal mass bulging into one lung."""
    cm = scene.cm
    r = 0.5 * rng.uniform(3.2, 8.0) * cm
    sides = choose_sides(rng, where, p_bilateral=0.0)
    side = sides[int(rng.integers(len(sides)))]
    mediastinal = where.has("mediastinum", "mediastinal", "paratracheal") or rng.random() < 0.2
    if mediastinal:
        y0, y1, lateral, medial, height, width = _side_frame(scene, side)
        o = scene.outward[side] if scene.view is View.FRONTAL else -1
        cx = medial + o * rng.uniform(0.1, 0.5) * r
        cy = y0 + rng.uniform(0.15, 0.4) * height
    else:
        band = choose_band(rng, where, {"upper": 0.4, "middle": 0.35, "basal": 0.25})
        cx, cy = scene.sample_lung_point(rng, side, band, margin=0.5 * r)
    win = scene.window_around(cx, cy, 2.0 * r)
    if win is None:
        return
    field = blob(
        win,
        cx,
        cy,
        r,
        r * rng.uniform(0.8, 1.2),
        angle=rng.uniform(0, math.pi),
        softness=rng.uniform(0.1, 0.4),
        lobes=random_lobes(rng, rng.uniform(0.08, 0.2)),
    )
    _add_fill(scene, win, rng.uniform(0.35, 0.65) * field)


def draw_pneumothorax(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Lung collapsed towards the hilum: dark apical/lateral pleural air without markings, visceral line."""
    sides = choose_sides(rng, where, p_bilateral=0.05, p_right=0.55)
    for side in sides:
        _collapse(scene, side, rng.uniform(0.6, 0.9), rng.uniform(0.5, 0.85))


def draw_subcutaneous_emphysema(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Dark feathery streaks of air along the muscle planes of the chest wall, outside the ribs and pectorals."""
    cm = scene.cm
    body = scene.body if scene.body is not None else np.ones_like(scene.soft)
    for side in choose_sides(rng, where, p_bilateral=0.4):
        y0, y1, lateral, medial, height, width = _side_frame(scene, side)
        o = scene.outward[side]
        x_a, x_b = sorted((lateral - o * 0.45 * width, lateral + o * 0.2))
        bottom = y0 + rng.uniform(0.6, 1.0) * height
        win = scene.window(x_a, x_b, y0 - 0.03, bottom)
        if win is None:
            continue
        streaks = np.zeros((scene.size, scene.size), np.float32)
        for _ in range(int(rng.integers(15, 40))):
            # Fibres run from the axilla down and in (pectoral fan) or along the lateral wall.
            start = np.array([lateral + o * rng.uniform(-0.5, 3.0) * cm, rng.uniform(y0, bottom)])
            angle = math.radians(rng.uniform(55, 125))
            length = rng.uniform(1.5, 5.0) * cm
            step = np.array([-o * math.cos(angle), math.sin(angle)]) * length
            bend = rng.normal(0.0, 0.4, 2) * cm
            line = bezier(np.array([start, start + 0.5 * step + bend, start + step]), 24)
            draw_curve(streaks, line, rng.uniform(0.12, 0.3) * cm, lambda t: np.sin(np.pi * t) ** 0.5)
        outside = soft_inside((win.x - lateral) * o + 0.5 * cm, 1.0 * cm)
        over_pectorals = 0.6 * soft_inside(y0 + 0.4 * height - win.y, 0.05)
        region = np.maximum(outside, over_pectorals) * body[win.rows, win.cols]
        air = np.clip(streaks[win.rows, win.cols], 0.0, 1.0)
        scene.lucency[win.rows, win.cols] += rng.uniform(0.2, 0.35) * air * region


def draw_pneumoperitoneo(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Crescent of free air under the hemidiaphragm (right most visible, sometimes both)."""
    cm = scene.cm
    sides = (RIGHT, LEFT) if rng.random() < 0.3 else (RIGHT,)
    for side in sides:
        has, _, bottom = scene.lung_cols(side)
        y0, y1, x0, x1 = scene.lung_boxes[side]
        cols = np.flatnonzero(has[int(x0 * scene.size) : int(math.ceil(x1 * scene.size))]) + int(x0 * scene.size)
        if cols.size < 4:
            continue
        span = cols[-1] - cols[0]
        c0, c1 = cols[0] + int(0.1 * span), cols[-1] - int(0.1 * span)
        dome = bottom[c0:c1][None, :]
        win = scene.window(c0 / scene.size, c1 / scene.size, float(dome.min()) - 0.01, float(dome.max()) + 0.06)
        if win is None:
            continue
        u = np.linspace(0.0, 1.0, c1 - c0)[None, :]
        thick = rng.uniform(0.5, 1.5) * cm * np.clip(np.sin(np.pi * u), 0.0, 1.0) ** 0.7
        below = win.y - dome - 0.3 * cm  # the diaphragm muscle itself stays dense
        crescent = soft_inside(below, 1.5 / scene.size) * soft_inside(thick - below, 0.15 * cm)
        scene.lucency[win.rows, win.cols] += rng.uniform(0.25, 0.4) * crescent


def draw_vascular_hilar_enlargement(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Enlarged, dense, lobulated hila made of thick proximal arteries, with prominent vessels beyond."""
    cm = scene.cm
    if where.sides:
        sides = where.sides
    else:
        sides = SIDES if rng.random() < 0.75 else ((RIGHT,) if rng.random() < 0.5 else (LEFT,))
    for side in sides:
        hx, hy = scene.landmarks[f"hilum_{side}"]
        o = scene.outward[side] if scene.view is View.FRONTAL else 1
        scale = rng.uniform(1.0, 1.6)
        win = scene.window_around(hx, hy, 11.0 * cm)  # covers the vessel boost out to 3 sigma
        if win is None:
            continue
        # Lobulated hilum: a thick vertical arterial trunk plus plump lobar arteries radiating from it.
        field = blob(
            win, hx + o * 0.5 * cm, hy, 1.2 * cm * scale, 2.8 * cm * scale, softness=0.5, lobes=random_lobes(rng, 0.15)
        )
        for angle in rng.uniform(-75, 75, int(rng.integers(3, 6))):
            rad = math.radians(angle)
            dist = rng.uniform(1.2, 2.2) * cm * scale
            bx, by = hx + o * dist * math.cos(rad), hy + dist * math.sin(rad)
            branch = blob(
                win,
                bx,
                by,
                rng.uniform(0.9, 1.5) * cm * scale,
                rng.uniform(0.45, 0.65) * cm * scale,
                angle=rad if o > 0 else math.pi - rad,
                softness=0.6,
            )
            np.maximum(field, branch, out=field)
        _add_fill(scene, win, rng.uniform(0.35, 0.55) * field)
        scene.density[win.rows, win.cols] += 0.02 * field
        boost = np.exp(-(((win.x - hx) ** 2 + (win.y - hy) ** 2) / (2 * (3.5 * cm) ** 2)))
        m = scene.markings[win.rows, win.cols]
        scene.markings[win.rows, win.cols] = 1.0 + (m - 1.0) * (1.0 + rng.uniform(0.8, 1.5) * boost)


def draw_vertebral_degenerative_changes(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Beak-like osteophytes at vertebral body corners and sclerotic endplates."""
    cm = scene.cm
    pitch, phase0, half = scene.vertebra_pitch, scene.vertebra_phase0, scene.vertebra_half_width
    if scene.spine_x is None or pitch <= 0:
        return
    top = min(b[0] for b in scene.lung_boxes.values())
    bottom = max(b[1] for b in scene.lung_boxes.values())
    first = int(math.ceil((top + 0.35 * (bottom - top) - phase0) / pitch))
    last = int((bottom + 0.05 - phase0) / pitch)
    levels = np.arange(first, max(first + 1, last))
    chosen = rng.choice(levels, size=min(len(levels), int(rng.integers(3, 8))), replace=False)
    lateral = scene.view is View.LATERAL
    for k in chosen:
        y = phase0 + k * pitch
        row = min(scene.size - 1, max(0, int(y * scene.size)))
        sx = float(scene.spine_x[row])
        directions = (-1,) if lateral else ((-1, 1) if rng.random() < 0.5 else (int(rng.choice([-1, 1])),))
        for d in directions:
            for above in (-1, 1):  # spurs from the endplates on both sides of the disc
                if rng.random() < 0.35:
                    continue
                length = rng.uniform(0.3, 0.9) * cm
                corner = (sx + d * half, y + above * 0.2 * pitch)
                tip = (sx + d * (half + length), y + above * rng.uniform(0.0, 0.1) * pitch)
                ctrl = np.array([corner, (corner[0] + d * 0.6 * length, corner[1]), tip])
                draw_curve(scene.bone, bezier(ctrl, 16), rng.uniform(0.3, 0.45) * cm, lambda t: 0.25 * (1.0 - 0.7 * t))
        plate = np.array([(sx - half, y + 0.12 * pitch), (sx + half, y + 0.12 * pitch)])
        draw_curve(scene.bone, plate, 0.2 * cm, 0.08)


def draw_interstitial_pattern(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Fine reticular net of thin lines (zero crossings of band-limited noise) with a faint haze."""
    cm = scene.cm
    diffuse = where.has("diffuse") or (not where.levels and rng.random() < 0.35)
    band = (0.05, 0.95) if diffuse else choose_band(rng, where, {"basal": 0.8, "middle": 0.2})
    sides = where.sides if where.sides else (SIDES if rng.random() < 0.8 else (RIGHT if rng.random() < 0.5 else LEFT,))
    for side in sides:
        y0, y1, x0, x1 = scene.lung_boxes[side]
        height = y1 - y0
        a, b = y0 + band[0] * height, y0 + band[1] * height
        win = scene.window(x0, x1, a - 0.05, b + 0.05)
        if win is None:
            continue
        h, w = win.y.shape[0], win.x.shape[1]
        cell = max(1.0, rng.uniform(0.15, 0.25) * cm * scene.size)  # pixels per noise sample
        small = (max(4, int(h / cell)), max(4, int(w / cell)))
        net_noise = smooth_noise(rng, small, (h, w), 1.0)
        lines = np.exp(-((net_noise / rng.uniform(0.12, 0.2)) ** 2))
        envelope = soft_inside(win.y - a, 0.06) * soft_inside(b - win.y, 0.06) * _lung_inside(scene, side, win)
        strength = rng.uniform(0.18, 0.35)
        _add_fill(scene, win, envelope * (strength * lines + rng.uniform(0.05, 0.12)))


def draw_central_venous_catheter(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Thin radiopaque line from the neck (jugular) or under the clavicle (subclavian) to the cavo-atrial junction."""
    cm = scene.cm
    svc = np.array(scene.landmarks["svc_tip"]) + rng.normal(0.0, 0.5, 2) * cm
    route = rng.choice(
        ["right_jugular", "right_subclavian", "left_subclavian", "left_jugular"], p=[0.45, 0.25, 0.2, 0.1]
    )
    carina_y = scene.landmarks["carina"][1]
    if route == "right_jugular":
        n = scene.landmarks["neck_right"]
        ctrl = [n, (n[0] + 0.25 * (svc[0] - n[0]), 0.5 * carina_y), (svc[0], svc[1] - 0.08), svc]
    elif route == "left_jugular":
        n = scene.landmarks["neck_left"]
        ctrl = [n, (n[0], 0.6 * carina_y), (svc[0] + 0.02, carina_y - 0.04), (svc[0], svc[1] - 0.04), svc]
    else:
        side = RIGHT if route == "right_subclavian" else LEFT
        s = scene.landmarks[f"subclavian_{side}"]
        mid = (0.5 * (s[0] + svc[0]), s[1] - 0.01)
        ctrl = [(s[0] + (s[0] - svc[0]) * 0.3, s[1] + 0.02), s, mid, (svc[0], svc[1] - 0.07), svc]
    pts = spline(np.asarray(ctrl) + rng.normal(0.0, 0.002, (len(ctrl), 2)), 128)
    draw_curve(scene.density, pts, rng.uniform(0.15, 0.25) * cm, rng.uniform(0.4, 0.6) * METAL * 0.6)


def draw_bronchiectasis(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Clusters of thick-walled ring shadows and tram-track parallel lines pointing to the hilum."""
    cm = scene.cm
    for side in choose_sides(rng, where, p_bilateral=0.5):
        band = choose_band(rng, where, {"basal": 0.7, "middle": 0.2, "upper": 0.1})
        cx, cy = scene.sample_lung_point(rng, side, band, margin=2.0 * cm)
        hx, hy = scene.landmarks[f"hilum_{side}"]
        radial = np.array([cx - hx, cy - hy])
        radial /= np.linalg.norm(radial) + 1e-9
        for _ in range(int(rng.integers(6, 15))):
            px, py = np.array([cx, cy]) + rng.normal(0.0, 1.5, 2) * cm
            radius = rng.uniform(0.3, 0.6) * cm
            wall = rng.uniform(0.12, 0.22) * cm
            win = scene.window_around(px, py, radius + 2 * wall)
            if win is None:
                continue
            rho = np.sqrt((win.x - px) ** 2 + (win.y - py) ** 2)
            ring = soft_inside(wall / 2 - np.abs(rho - radius), 1.2 / scene.size)
            lumen = soft_inside(radius - wall / 2 - rho, 1.2 / scene.size)
            inside = _lung_inside(scene, side, win)
            scene.density[win.rows, win.cols] += 0.08 * ring * inside
            scene.markings[win.rows, win.cols] *= 1.0 - lumen
            scene.lucency[win.rows, win.cols] += 0.02 * lumen * inside
        normal = np.array([-radial[1], radial[0]])
        for _ in range(int(rng.integers(2, 6))):
            centre = np.array([cx, cy]) + rng.normal(0.0, 1.5, 2) * cm
            half = 0.5 * rng.uniform(2.0, 4.0) * cm * radial
            gap = 0.5 * rng.uniform(0.5, 0.8) * cm * normal
            for sign in (-1, 1):
                line = np.array([centre - half + sign * gap, centre + half + sign * gap])
                draw_curve(scene.density, line, rng.uniform(0.1, 0.16) * cm, 0.09)


def draw_sternotomy(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Vertical row of 5-8 twisted wire loops over the sternum (edge-on dashes on laterals)."""
    cm = scene.cm
    top = np.array(scene.landmarks["sternum_top"])
    bottom = np.array(scene.landmarks["sternum_bottom"])
    count = int(rng.integers(5, 9))
    for i in range(count):
        f = (i + 0.5 + rng.uniform(-0.2, 0.2)) / count
        cx, cy = top + f * (bottom - top) + rng.normal(0.0, 0.2, 2) * cm
        wire = rng.uniform(0.1, 0.16) * cm
        if scene.view is View.LATERAL:
            dash = np.array([(cx - 0.3 * cm, cy - 0.1 * cm), (cx + 0.3 * cm, cy + 0.1 * cm)])
            draw_curve(scene.density, dash, 1.5 * wire, WIRE)
            continue
        rx, ry = rng.uniform(0.6, 1.0) * cm, rng.uniform(0.3, 0.5) * cm
        tilt = rng.uniform(-0.25, 0.25)
        theta = np.linspace(0.0, 2 * np.pi, 48)
        c, s = math.cos(tilt), math.sin(tilt)
        ex, ey = rx * np.cos(theta), ry * np.sin(theta) * (1.0 + 0.3 * np.cos(2 * theta))
        loop = np.stack([cx + ex * c - ey * s, cy + ex * s + ey * c], axis=1)
        draw_curve(scene.density, loop, wire, WIRE)
        knot_side = 1 if rng.random() < 0.5 else -1
        knot = (cx + knot_side * rx * c, cy + knot_side * rx * s)
        win = scene.window_around(*knot, 0.6 * cm)
        if win is not None:
            scene.density[win.rows, win.cols] += WIRE * blob(win, *knot, 0.25 * cm, 0.2 * cm, softness=0.3)
        tail = np.array([knot, (knot[0] + knot_side * 0.15 * cm, knot[1] + 0.4 * cm)])
        draw_curve(scene.density, tail, wire, WIRE)


def draw_calcified_densities(scene: Scene, rng: np.random.Generator, where: Placement) -> None:
    """Two to eight small, very bright, sharp dots in the lungs or hila (calcified granulomas)."""
    cm = scene.cm
    hilar = where.has("hilar", "perihilar") or rng.random() < 0.25
    sides = choose_sides(rng, where, p_bilateral=0.4)
    for i in range(int(rng.integers(2, 9))):
        side = sides[i % len(sides)]
        if hilar and i % 2 == 0:
            hx, hy = scene.landmarks[f"hilum_{side}"]
            cx, cy = hx + rng.normal(0.0, 1.0) * cm, hy + rng.normal(0.0, 1.5) * cm
        else:
            band = choose_band(rng, where, {"upper": 0.4, "middle": 0.35, "basal": 0.25})
            cx, cy = scene.sample_lung_point(rng, side, band, margin=0.5 * cm)
        r = 0.5 * rng.uniform(0.3, 0.8) * cm
        win = scene.window_around(cx, cy, 2.0 * r + 2.0 / scene.size)
        if win is None:
            continue
        dot = blob(win, cx, cy, r, r * rng.uniform(0.8, 1.0), softness=0.15, lobes=random_lobes(rng, 0.08))
        scene.density[win.rows, win.cols] += rng.uniform(0.6, 1.0) * CALCIUM * dot
        _add_fill(scene, win, 0.5 * dot)


# --------------------------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------------------------

AnatomyEffect = Callable[[Anatomy, np.random.Generator, Placement], None]
FindingRenderer = Callable[[Scene, np.random.Generator, Placement], None]

ANATOMY_EFFECTS: dict[str, AnatomyEffect] = {
    "aortic elongation": effect_aortic_elongation,
    "cardiomegaly": effect_cardiomegaly,
    "atelectasis": effect_atelectasis,
    "emphysema": effect_emphysema,
    "kyphosis": effect_kyphosis,
    "hyperinflated lung": effect_hyperinflated_lung,
    "hypoexpansion": effect_hypoexpansion,
    "hemidiaphragm elevation": effect_hemidiaphragm_elevation,
}

FINDING_RENDERERS: dict[str, FindingRenderer] = {
    "normal": draw_nothing,
    "aortic elongation": draw_aortic_elongation,
    "cardiomegaly": draw_nothing,
    "pleural effusion": draw_pleural_effusion,
    "nodule": draw_nodule,
    "atelectasis": draw_atelectasis,
    "pleural thickening": draw_pleural_thickening,
    "aortic atheromatosis": draw_aortic_atheromatosis,
    "support devices": draw_support_devices,
    "alveolar pattern": draw_alveolar_pattern,
    "fracture": draw_fracture,
    "hernia": draw_hernia,
    "emphysema": draw_emphysema,
    "azygos lobe": draw_azygos_lobe,
    "hydropneumothorax": draw_hydropneumothorax,
    "kyphosis": draw_nothing,
    "mass": draw_mass,
    "pneumothorax": draw_pneumothorax,
    "subcutaneous emphysema": draw_subcutaneous_emphysema,
    "pneumoperitoneo": draw_pneumoperitoneo,
    "vascular hilar enlargement": draw_vascular_hilar_enlargement,
    "vertebral degenerative changes": draw_vertebral_degenerative_changes,
    "hyperinflated lung": draw_nothing,
    "interstitial pattern": draw_interstitial_pattern,
    "central venous catheter": draw_central_venous_catheter,
    "hypoexpansion": draw_nothing,
    "bronchiectasis": draw_bronchiectasis,
    "hemidiaphragm elevation": draw_nothing,
    "sternotomy": draw_sternotomy,
    "calcified densities": draw_calcified_densities,
}

# Anatomy-level findings first, then opacities, lucencies, bone, devices on top.
DRAW_ORDER: tuple[str, ...] = (
    "normal",
    "cardiomegaly",
    "hyperinflated lung",
    "hypoexpansion",
    "hemidiaphragm elevation",
    "kyphosis",
    "aortic elongation",
    "vascular hilar enlargement",
    "hernia",
    "pleural effusion",
    "atelectasis",
    "alveolar pattern",
    "interstitial pattern",
    "nodule",
    "mass",
    "bronchiectasis",
    "pleural thickening",
    "azygos lobe",
    "calcified densities",
    "aortic atheromatosis",
    "emphysema",
    "pneumothorax",
    "hydropneumothorax",
    "subcutaneous emphysema",
    "pneumoperitoneo",
    "fracture",
    "vertebral degenerative changes",
    "sternotomy",
    "central venous catheter",
    "support devices",
)

if not set(FINDING_RENDERERS) == set(CLASS_NAMES) == set(DRAW_ORDER) >= set(ANATOMY_EFFECTS):
    raise RuntimeError("finding registries must cover exactly the 30 classes")
