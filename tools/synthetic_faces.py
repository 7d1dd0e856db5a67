"""Procedural synthetic faces: an identity is a parameter vector, an image renders it under nuisance.

The faces are drawn with OpenCV (anti-aliased, sub-pixel coordinates) straight into a 112x112
BGR crop laid out like an ArcFace-aligned face: before nuisance the eyes sit near (38, 52) and
(74, 52). Features live on an ellipsoidal head, so a yaw rotation moves the nose, eyes and mouth
sideways and foreshortens them the way a turned head does, and the far eye disappears at profile.

Everything is a pure function of its random generator: ``render(identity, nuisance, rng)`` with
``identity = sample_identity(default_rng([seed, STREAM_IDENTITY, id, 0]))`` gives the same bytes on
every machine and in every worker process, which is what makes the dataset reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from utils.registry import Registry

__all__ = [
    "CHILD_AGES",
    "IMAGE_SIZE",
    "NuisanceProfile",
    "PROFILES",
    "STREAM_EVAL",
    "STREAM_IDENTITY",
    "STREAM_TRAIN",
    "child_identity",
    "encode_jpeg",
    "get_profile",
    "identity_rng",
    "image_rng",
    "render",
    "render_identity_image",
    "sample_identity",
    "sample_nuisance",
]

IMAGE_SIZE = 112
# Face frame: origin midway between the eyes of the ArcFace template ((38.29, 51.70), (73.53, 51.50)).
ORIGIN = np.array([55.9, 51.6], np.float32)
HEAD_CY = 6.0  # the head ellipsoid's centre sits a little below eye level
_SHIFT = 4  # OpenCV fixed-point bits: coordinates are drawn with 1/16 pixel precision
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA

# Random streams: the first words of every SeedSequence key ([seed, stream, a, b]).
STREAM_IDENTITY = 0
STREAM_TRAIN = 1
STREAM_COUNT = 2
STREAM_PAIRS = 3
STREAM_EVAL = 10  # + the set's stream number (tools/make_synthetic.py BIN_SPECS)

# Palettes in BGR. Skin tones run light to dark and are interpolated continuously.
_SKIN = np.array(
    [[196, 224, 255], [167, 194, 241], [138, 172, 224], [98, 134, 198], [68, 102, 161],
     [48, 74, 120], [37, 55, 87]], np.float32)
_HAIR = np.array(
    [[22, 22, 25], [30, 40, 60], [45, 70, 100], [70, 110, 150], [100, 150, 180],
     [140, 200, 225], [35, 70, 165], [30, 50, 120], [210, 225, 230], [160, 60, 40]], np.float32)
_HAIR_P = np.array([0.24, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.05, 0.03, 0.03])
_EYES = np.array(
    [[20, 35, 60], [40, 70, 110], [60, 110, 140], [80, 130, 90], [170, 120, 80], [150, 140, 130]],
    np.float32)
_GREY_HAIR = np.array([200, 200, 200], np.float32)
_UNIT16 = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], 1).astype(np.float32)
_UNIT16_H = np.concatenate([_UNIT16, np.ones((16, 1), np.float32)], 1)  # the centre rides in the matmul
# fixed sample positions, precomputed: np.linspace per primitive costs as much as drawing it
_LIN6 = np.linspace(-0.5, 0.5, 6).astype(np.float32)
_LIN7 = np.linspace(-0.5, 0.5, 7).astype(np.float32)
_LIN13 = np.linspace(-0.97, 0.97, 13).astype(np.float32)
_RAMP6 = np.linspace(0, 1, 6).astype(np.float32)
_T32 = np.linspace(0, 2 * np.pi, 32, endpoint=False).astype(np.float32)
_SIN32, _COS32 = np.sin(_T32), np.cos(_T32)
_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1) - 0.5

# Hair styles: bald, buzz, short, side part, bangs, long, long side part, curly, bun
HAIR_STYLES = ("bald", "buzz", "short", "side_part", "bangs", "long", "long_part", "curly", "bun")
_STYLE_P_MASC = np.array([0.08, 0.15, 0.32, 0.22, 0.05, 0.04, 0.02, 0.1, 0.02])
_STYLE_P_FEM = np.array([0.0, 0.02, 0.1, 0.08, 0.16, 0.26, 0.18, 0.1, 0.1])
BEARDS = ("none", "stubble", "moustache", "goatee", "full")
OCCLUDERS = ("patch", "hand", "mask", "sunglasses", "hat", "object")


# --------------------------------------------------------------------------------------------
# random streams
def identity_rng(seed: int, identity: int) -> np.random.Generator:
    """The generator of an identity's parameters."""
    return np.random.default_rng([seed, STREAM_IDENTITY, identity, 0])


def image_rng(seed: int, stream: int, a: int, b: int) -> np.random.Generator:
    """The generator of one image: (stream, a, b) is e.g. (STREAM_TRAIN, identity, k)."""
    return np.random.default_rng([seed, stream, a, b])


# --------------------------------------------------------------------------------------------
# identities
def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Draw one identity: face shape, features, colours, hair, age and accessories."""
    u = rng.uniform
    masc = float(rng.random() < 0.5)
    skin_t = float(np.clip(rng.beta(1.6, 1.6), 0, 1))
    lo = min(int(skin_t * 6), 5)
    skin = _mix(_SKIN[lo], _SKIN[lo + 1], skin_t * 6 - lo)
    skin = skin * rng.uniform(0.95, 1.05, 3).astype(np.float32)  # undertone
    hair_idx = int(rng.choice(len(_HAIR), p=_HAIR_P))
    if skin_t > 0.55 and hair_idx in (4, 5, 6, 8):  # keep blond/red mostly on lighter skin
        hair_idx = int(rng.integers(0, 3))
    hair = _HAIR[hair_idx] * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    style = int(rng.choice(len(HAIR_STYLES), p=_STYLE_P_MASC if masc else _STYLE_P_FEM))
    beard = int(rng.choice(len(BEARDS), p=[0.45, 0.15, 0.15, 0.1, 0.15])) if masc else 0
    glasses = rng.random() < 0.22
    n_moles = int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))
    lip_t = u(0.1, 0.35) + (u(0.0, 0.35) if not masc else 0.0)
    return {
        "masc": masc,
        "skin": skin.clip(0, 255),
        "skin_t": skin_t,
        "hair_idx": hair_idx,
        "hair": hair.clip(0, 255),
        "eye_colour": _EYES[int(rng.integers(len(_EYES)))] * rng.uniform(0.85, 1.15),
        "lip": _mix(skin * 0.85, np.array([70, 60, 180], np.float32), lip_t).clip(0, 255),
        # head and outline
        "face_a": u(36.5, 44.0) + 1.5 * masc,
        "face_b": u(49.0, 56.0),
        "depth": u(1.0, 1.25),
        "jaw": u(0.1, 0.45) - 0.08 * masc,
        "chin_pow": u(1.2, 3.0),
        "forehead": u(0.88, 1.02),
        # eyes
        "eye_dx": u(15.5, 19.5),
        "eye_dy": u(-2.0, 2.0),
        "eye_w": u(5.8, 9.0),
        "eye_h": u(2.4, 4.2),
        "eye_tilt": u(-0.22, 0.22),
        "iris": u(0.55, 0.8),
        # brows
        "brow_dy": u(6.5, 11.5),
        "brow_len": u(11.0, 17.0),
        "brow_thick": int(rng.choice([1, 2, 2, 3, 3, 4])) + int(masc and rng.random() < 0.4),
        "brow_arch": u(-0.1, 0.6),
        "brow_tilt": u(-0.2, 0.2),
        "brow_dark": u(0.55, 0.95),
        # nose
        "nose_len": u(15.0, 24.0),
        "nose_w": u(5.5, 11.0),
        "nose_out": u(6.0, 14.0),
        "nose_hook": u(-1.0, 1.0),
        # mouth
        "mouth_y": u(35.0, 44.0),
        "mouth_w": u(14.0, 22.0),
        "lip_up": u(1.2, 3.2),
        "lip_low": u(1.8, 4.2),
        "smile0": u(-0.25, 0.3),
        # hair
        "style": style,
        "hairline": u(-40.0, -27.0),
        "hair_vol": u(2.0, 9.0),
        "hair_len": u(35.0, 80.0),
        "part": float(rng.choice([-1.0, 1.0])),
        "peak": float(rng.random() < 0.2),
        "recede": u(0.3, 1.0) if masc and rng.random() < 0.45 else 0.0,
        # age
        "age": u(18.0, 72.0),
        "grey_onset": u(40.0, 85.0),
        "wrinkle": u(0.4, 1.2),
        "weight_gain": u(-0.5, 1.0),
        # accessories and marks
        "beard": beard,
        "glasses": glasses,
        "glasses_round": float(rng.random() < 0.5),
        "glasses_colour": (rng.uniform(0, 90, 3) if rng.random() < 0.7 else rng.uniform(60, 220, 3)),
        "glasses_thick": int(rng.integers(1, 3)),
        "earrings": (not masc and rng.random() < 0.45) or (masc and rng.random() < 0.08),
        "earring_colour": np.array([60, 180, 220] if rng.random() < 0.6 else [200, 200, 200],
                                   np.float32),
        "moles": np.stack([rng.uniform(-30, 30, n_moles), rng.uniform(-15, 45, n_moles),
                           rng.uniform(0.8, 1.7, n_moles)], 1).astype(np.float32),
        "blush": u(0.0, 0.25),
    }


CHILD_AGES = (4.0, 14.0)  # the ages child_identity accepts
ADULT_AGE = 18.0  # sample_identity's youngest: child proportions fade out towards it


def child_identity(ident: dict[str, Any], age: float) -> dict[str, Any]:
    """The identity as a child of ``age`` years (CHILD_AGES): a child's proportions, no beard.

    sample_identity draws adults only (18-72) and render's age only greys and wrinkles, so a
    young face needs its geometry changed: in an aligned crop a child has a short lower face
    (small nose, mouth close to it, a round jaw), large eyes and irises and faint brows. The
    identity's own parameters are scaled, not redrawn, so the child still resembles the adult.
    A new function rather than a new draw in sample_identity: every existing set stays byte-identical.
    """
    lo, hi = CHILD_AGES
    if not lo <= age <= hi:
        raise ValueError(f"child age must be in {lo:g}..{hi:g} years, got {age:g}")
    t = (ADULT_AGE - age) / (ADULT_AGE - lo)  # 1 at the youngest, ~0.3 at the oldest child
    c = dict(ident)
    c.update(
        age=float(age),
        face_a=ident["face_a"] * (1 + 0.04 * t),
        face_b=ident["face_b"] * (1 - 0.1 * t),
        jaw=ident["jaw"] * (1 - 0.7 * t),
        chin_pow=ident["chin_pow"] * (1 - 0.3 * t),
        eye_w=ident["eye_w"] * (1 + 0.1 * t),
        eye_h=ident["eye_h"] * (1 + 0.25 * t),
        iris=min(ident["iris"] * (1 + 0.25 * t), 0.85),
        brow_thick=max(1, ident["brow_thick"] - round(2 * t)),
        brow_dark=ident["brow_dark"] * (1 - 0.3 * t),
        nose_len=ident["nose_len"] * (1 - 0.2 * t),
        nose_w=ident["nose_w"] * (1 - 0.2 * t),
        nose_out=ident["nose_out"] * (1 - 0.5 * t),
        nose_hook=ident["nose_hook"] * (1 - t),
        mouth_y=ident["mouth_y"] * (1 - 0.2 * t),
        mouth_w=ident["mouth_w"] * (1 - 0.2 * t),
        blush=ident["blush"] + 0.12 * t,
        beard=0, recede=0.0, wrinkle=0.0, weight_gain=0.0,
    )
    return c


# --------------------------------------------------------------------------------------------
# nuisance
@dataclass(frozen=True)
class NuisanceProfile:
    """How strongly each nuisance varies across the images of a set (0 turns it off)."""

    yaw_std: float = 0.0  # degrees, near-frontal images
    turned_p: float = 0.0  # probability of a turned head instead
    turned_range: tuple[float, float] = (30.0, 80.0)  # |yaw| of a turned head, degrees
    pitch_std: float = 0.0
    roll_std: float = 0.0
    scale_std: float = 0.0
    shift_std: float = 0.0  # pixels
    age_std: float = 0.0  # years around the identity's age
    expression: float = 0.0  # 0..1 strength of mouth/eye/brow expressions
    light: float = 0.0  # max strength of the illumination gradient
    ambient: tuple[float, float] = (1.0, 1.0)
    jitter: float = 0.0  # std of per-channel colour gains
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_max: float = 0.0  # Gaussian sigma, pixels
    noise_max: float = 0.0  # Gaussian noise std, grey levels
    occlusion_p: float = 0.0
    occluders: tuple[str, ...] = OCCLUDERS
    clutter: int = 0  # max background shapes
    glasses_off_p: float = 0.0
    hair_jitter: float = 0.0  # variation of hair volume/hairline (haircuts)
    extra: dict = field(default_factory=dict)


_MILD = NuisanceProfile(
    yaw_std=10, turned_p=0.05, turned_range=(25, 45), pitch_std=5, roll_std=5, scale_std=0.04,
    shift_std=2, age_std=3, expression=0.6, light=0.45, ambient=(0.75, 1.15), jitter=0.07,
    gray_p=0.05, blur_p=0.2, blur_max=1.0, noise_max=5, occlusion_p=0.05, clutter=6,
    glasses_off_p=0.1, hair_jitter=0.5)

PROFILES: Registry[NuisanceProfile] = Registry("nuisance profile")
# no nuisance at all: the identity itself, for tests and thumbnails
PROFILES.add("clean", NuisanceProfile())
# training: a spread of every nuisance, otherwise nothing can learn invariance to it
PROFILES.add("train", NuisanceProfile(
    yaw_std=15, turned_p=0.25, turned_range=(30, 85), pitch_std=8, roll_std=8,
    scale_std=0.07, shift_std=3, age_std=8, expression=1.0, light=0.75, ambient=(0.6, 1.25),
    jitter=0.12, gray_p=0.12, blur_p=0.3, blur_max=1.6, noise_max=8, occlusion_p=0.25,
    clutter=8, glasses_off_p=0.15, hair_jitter=1.0))
PROFILES.add("lfw", _MILD)
PROFILES.add("cfp_fp/frontal", replace(_MILD, yaw_std=5, turned_p=0.0))
PROFILES.add("cfp_fp/profile", replace(_MILD, turned_p=1.0, turned_range=(60, 85)))
PROFILES.add("agedb_30", replace(_MILD, light=0.6, gray_p=0.35, ambient=(0.65, 1.2)))
PROFILES.add("calfw", replace(_MILD, light=0.8, ambient=(0.6, 1.25), jitter=0.1))
PROFILES.add("cplfw", replace(_MILD, turned_p=0.6, turned_range=(30, 70), occlusion_p=0.5))


def get_profile(name: str) -> NuisanceProfile:
    """The nuisance profile registered as ``name`` (any case); UnknownNameError naming the known ones."""
    return PROFILES.get(name)


def sample_nuisance(rng: np.random.Generator, profile: NuisanceProfile, **override: Any) -> dict[str, Any]:
    """Draw one image's nuisance from ``profile``; keyword arguments replace drawn values."""
    p = profile
    u = rng.uniform
    if rng.random() < p.turned_p:
        yaw = u(*p.turned_range) * rng.choice([-1.0, 1.0])
    else:
        yaw = rng.normal(0, p.yaw_std) if p.yaw_std else 0.0
    e = p.expression
    n = {
        "yaw": float(np.clip(yaw, -88, 88)),
        "pitch": rng.normal(0, p.pitch_std) if p.pitch_std else 0.0,
        "roll": rng.normal(0, p.roll_std) if p.roll_std else 0.0,
        "scale": float(np.exp(rng.normal(0, p.scale_std))) if p.scale_std else 1.0,
        "shift": rng.normal(0, p.shift_std, 2) if p.shift_std else np.zeros(2),
        "age_delta": rng.normal(0, p.age_std) if p.age_std else 0.0,
        "smile": u(-0.3, 1.0) * e * (rng.random() < 0.6),
        "mouth_open": u(0, 1) * e * (rng.random() < 0.3),
        "eye_close": u(0, 1) * e * (rng.random() < 0.2),
        "brow_raise": u(-1, 1) * e * (rng.random() < 0.4),
        "gaze": rng.normal(0, 0.25 * e, 2),
        "light": u(0, p.light),
        "light_dir": u(0, 2 * np.pi),
        "ambient": u(*p.ambient),
        "gains": np.exp(rng.normal(0, p.jitter, 3)) if p.jitter else np.ones(3),
        "gray": rng.random() < p.gray_p,
        "blur": u(0.3, p.blur_max) if rng.random() < p.blur_p else 0.0,
        "noise": u(0, p.noise_max),
        "occluder": (str(rng.choice(p.occluders)) if rng.random() < p.occlusion_p else ""),
        "clutter": int(rng.integers(0, p.clutter + 1)) if p.clutter else 0,
        "glasses_off": rng.random() < p.glasses_off_p,
        "hair_vol": rng.normal(0, 1.5 * p.hair_jitter),
        "hairline": rng.normal(0, 1.5 * p.hair_jitter),
        "bg": rng.uniform(20, 235, 3) if p.clutter else np.full(3, 128.0),
        "clothes": rng.uniform(10, 240, 3),
        "weight": rng.normal(0, 0.3) if p.age_std else 0.0,
        "beard_grow": rng.normal(0, 0.15) if p.hair_jitter else 0.0,
    }
    n.update(override)
    return n


# --------------------------------------------------------------------------------------------
# geometry
FEAT, OUTL, HALF, PLAIN, IMAGE = range(5)  # how a primitive's points reach the image (see _Scene)
_DUAL = 4.0 / 3.0  # dual exponent of the head's quartic cross-section (its silhouette)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    return _UNIT16_H @ np.array([[rx * ca, rx * sa], [-ry * sa, ry * ca], [cx, cy]], np.float32)


def _pts(*xy: float) -> np.ndarray:
    return np.array(xy, np.float32).reshape(-1, 2)


class _Scene:
    """A display list of primitives, projected in one vectorised pass and drawn in order.

    Points are given in the face plane (x right, y down, origin between the eyes) and mapped by
    mode: FEAT points lie on the head surface (raised by ``dz``) and turn with yaw and pitch;
    OUTL points are on the head's silhouette (the side the face turns to follows the surface's
    silhouette, the ear side compresses); HALF is their average (a beard hugging the jaw); PLAIN
    points are already in the turned head's frame; IMAGE points are pixels. Every mode but IMAGE
    then gets the in-plane rotation, scale and shift. Batching matters: per-primitive numpy
    calls cost 3x the drawing itself.

    The surface is built on the face outline: the horizontal slice at height y is a
    superellipse |x/w|^4 + |z/(k w)|^4 = 1 with w the outline's half-width there, flatter in
    front than an ellipse (so the far eye stays on the face up to ~65 degrees of yaw, as on real
    heads), and its silhouette under yaw has a closed form (the dual exponent 4/3).
    """

    def __init__(self, ident: dict, nz: dict, a: float):
        self.a, self.b = a, ident["face_b"]
        self.k = ident["depth"]
        self.jaw, self.chin_pow, self.forehead = ident["jaw"], ident["chin_pow"], ident["forehead"]
        t = math.radians(nz["yaw"])
        self.sin, self.cos = math.sin(t), math.cos(t)
        ph = math.radians(nz["pitch"])
        self.psin, self.pcos = math.sin(ph), math.cos(ph)
        # support function of the slice: how far the silhouette reaches, per unit of half-width
        self.sil = (abs(self.cos) ** _DUAL + (self.k * abs(self.sin)) ** _DUAL) ** (1 / _DUAL)
        self.w_sil = a * self.sil
        self.back = -self.sin * a * self.k  # where the back of the head shows, seen from the camera
        r = math.radians(nz["roll"])
        self.scale = nz["scale"]
        self.m = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]], np.float32)
        self.m *= self.scale
        self.t = ORIGIN + np.asarray(nz["shift"], np.float32)
        self._pts: list[np.ndarray] = []
        self._dz: list[float] = []
        self._mode: list[int] = []
        self._ops: list[tuple] = []
        self._arrays: list[tuple] = []  # (first point, count, dz, mode) of per-point values
        self._n = 0

    # -- scalar geometry ------------------------------------------------------------------------
    def half_width(self, y):
        """Half-width of the face outline at height ``y`` (scalar or array)."""
        s = np.clip((y - HEAD_CY) / self.b, -0.999, 0.999)
        shape = np.where(s > 0, 1.0 - self.jaw * np.abs(s) ** self.chin_pow,
                         self.forehead + (1.0 - self.forehead) * (1.0 - np.abs(s)))
        return self.a * np.sqrt(1.0 - s * s) * shape

    def _half_width_at(self, y: float) -> float:
        # scalar twin of half_width: numpy on scalars costs more than the whole drawing
        s = min(max((y - HEAD_CY) / self.b, -0.999), 0.999)
        shape = (1.0 - self.jaw * abs(s) ** self.chin_pow if s > 0
                 else self.forehead + (1.0 - self.forehead) * (1.0 - abs(s)))
        return self.a * math.sqrt(1.0 - s * s) * shape

    def _depth(self, x: float, y: float) -> tuple[float, float]:
        w = self._half_width_at(y)
        u = max(1.0 - (x / w) ** 4, 0.02)
        return self.k * w * u**0.25, w

    def visible(self, x: float, y: float) -> float:
        """How squarely the surface at (x, y) faces the camera (<= 0: turned away, hidden)."""
        z, w = self._depth(x, y)
        nx = (x / w) ** 3 / w
        nzz = (z / (self.k * w)) ** 3 / (self.k * w)
        ny = (y - HEAD_CY) / self.b**2
        facing = (-nx * self.sin + nzz * self.cos) / math.sqrt(nx * nx + ny * ny + nzz * nzz)
        if x * self.sin <= 0:
            return facing
        # on the far side, what comes close to the silhouette is hidden by the brow and nose
        edge = 1.0 - abs(x * self.cos + z * self.sin) / (w * self.sil)
        return min(facing, 4.0 * edge)

    def feature_point(self, x: float, y: float, dz: float = 0.0) -> tuple[float, float]:
        """A surface point in the turned head's frame (PLAIN coordinates)."""
        z = self._depth(x, y)[0] + dz
        zr = -x * self.sin + z * self.cos
        return x * self.cos + z * self.sin, (y - HEAD_CY) * self.pcos + zr * self.psin * 0.5 + HEAD_CY

    def outline_point(self, x: float, y: float) -> tuple[float, float]:
        """A silhouette point in the turned head's frame (PLAIN coordinates)."""
        return x * (self.sil if x * self.sin > 0 else self.cos), y

    # -- primitives -----------------------------------------------------------------------------
    def _add(self, op: str, pts: np.ndarray, mode, dz, colour, arg) -> None:
        # per-point dz / mode arrays are rare: keep scalars and patch the arrays in draw()
        dz_scalar, mode_scalar = isinstance(dz, (float, int)), isinstance(mode, int)
        if not (dz_scalar and mode_scalar):
            self._arrays.append((self._n, len(pts), dz, mode))
        self._pts.append(pts)
        self._dz.append(dz if dz_scalar else 0.0)
        self._mode.append(mode if mode_scalar else FEAT)
        colour = colour.tolist() if isinstance(colour, np.ndarray) else tuple(map(float, colour))
        self._ops.append((op, len(pts), colour, arg))
        self._n += len(pts)

    def fill(self, pts: np.ndarray, colour, mode=FEAT, dz=0.0) -> None:
        self._add("fill", pts, mode, dz, colour, None)

    def stroke(self, pts: np.ndarray, colour, thick: int = 1, mode=FEAT, dz=0.0, closed: bool = False) -> None:
        self._add("closed" if closed else "line", pts, mode, dz, colour, max(1, int(thick)))

    def circle(self, x: float, y: float, radius: float, colour, mode=FEAT, dz=0.0) -> None:
        scale = 1.0 if mode == IMAGE else self.scale
        self._add("circle", _pts(x, y), mode, dz, colour, int(radius * scale * _ONE))

    def draw(self, img: np.ndarray) -> None:
        """Project every point at once, then draw the primitives in the order they were added."""
        if not self._ops:
            return
        p = np.concatenate(self._pts).astype(np.float32)
        counts = [op[1] for op in self._ops]
        dz = np.repeat(np.array(self._dz, np.float32), counts)
        mode = np.repeat(np.array(self._mode, np.int8), counts)
        for start, n, d, m in self._arrays:
            dz[start : start + n] = d
            mode[start : start + n] = m
        x, y = p[:, 0], p[:, 1]
        w = self.half_width(y)
        z = self.k * w * np.sqrt(np.sqrt(np.maximum(1.0 - (x / w) ** 4, 0.02))) + dz
        fx = x * self.cos + z * self.sin
        fy = (y - HEAD_CY) * self.pcos + (z * self.cos - x * self.sin) * (self.psin * 0.5) + HEAD_CY
        ox = x * np.where(x * self.sin > 0, self.sil, self.cos)
        px = np.select([mode == FEAT, mode == OUTL, mode == HALF], [fx, ox, 0.5 * (fx + ox)], x)
        py = np.select([mode == FEAT, mode == HALF], [fy, 0.5 * (fy + y)], y)
        out = np.stack([px, py], 1) @ self.m.T + self.t
        raw = mode == IMAGE
        out[raw] = p[raw]
        fixed = np.round(out * _ONE).astype(np.int32)
        i = 0
        for op, n, colour, arg in self._ops:
            pts = fixed[i : i + n]
            i += n
            if op == "fill":
                cv2.fillPoly(img, [pts], colour, _AA, _SHIFT)
            elif op == "circle":
                cv2.circle(img, (int(pts[0, 0]), int(pts[0, 1])), arg, colour, -1, _AA, _SHIFT)
            else:
                cv2.polylines(img, [pts], op == "closed", colour, arg, _AA, _SHIFT)


# --------------------------------------------------------------------------------------------
# drawing
def _background(img: np.ndarray, nz: dict, rng: np.random.Generator) -> None:
    # a filled rectangle: numpy's broadcast of a 3-vector over the image is 10x slower
    cv2.rectangle(img, (0, 0), (IMAGE_SIZE - 1, IMAGE_SIZE - 1), tuple(map(float, nz["bg"])), -1)
    n = nz["clutter"]
    if not n:
        return
    # one draw for all shapes: per-call Generator overhead dominates such small draws
    r = rng.random((n, 9))
    col = r[:, 4:7] * 255.0
    xy = r[:, :4] * 132.0 - 10.0
    fix = (xy * _ONE).astype(np.int32)
    for k in range(n):
        c = (col[k, 0], col[k, 1], col[k, 2])
        kind = int(r[k, 7] * 4)
        x, y = int(xy[k, 0]), int(xy[k, 1])
        if kind == 0:  # boxes: furniture, frames
            w, h = 8 + r[k, 2] * 52, 8 + r[k, 3] * 52
            cv2.rectangle(img, (x, y), (int(x + w), int(y + h)), c, -1, _AA)
        elif kind == 1:  # lamps, balls, bokeh
            radius = int((4 + 26 * r[k, 8]) * _ONE)
            cv2.circle(img, (int(fix[k, 0]), int(fix[k, 1])), radius, c, -1, _AA, _SHIFT)
        elif kind == 2:  # edges
            cv2.line(img, (int(fix[k, 0]), int(fix[k, 1])), (int(fix[k, 2]), int(fix[k, 3])), c,
                     1 + int(r[k, 8] * 5), _AA, _SHIFT)
        else:  # shelves, window blinds: stripes
            step = 4 + int(r[k, 8] * 8)
            for j in range(2 + int(r[k, 2] * 4)):
                cv2.line(img, (x - 30, y + j * step), (x + 30, y + j * step), c, 1, _AA)


def _hair_colour(ident: dict, age: float) -> np.ndarray:
    grey = 1.0 / (1.0 + math.exp(-(age - ident["grey_onset"]) / 5.0))
    return _mix(ident["hair"], _GREY_HAIR, 0.85 * grey)


def _hair_volume(ident: dict, nz: dict) -> float:
    if HAIR_STYLES[ident["style"]] == "buzz":
        return 0.8
    return max(0.5, ident["hair_vol"] + nz["hair_vol"]) + (6.0 if HAIR_STYLES[ident["style"]] == "curly" else 0.0)


def _crown(s: _Scene, vol: float, a0: float, a1: float, n: int) -> np.ndarray:
    """Points on the top of the head's silhouette (PLAIN), from angle a0 to a1."""
    ang = np.linspace(a0, a1, n).astype(np.float32)
    return np.stack([s.back * 0.25 + (s.w_sil + vol) * np.cos(ang),
                     HEAD_CY - 4 + (s.b + vol) * np.sin(ang)], 1)


def _back_hair(s: _Scene, ident: dict, nz: dict, hair: np.ndarray) -> None:
    style = HAIR_STYLES[ident["style"]]
    if style == "bald":
        return
    vol = _hair_volume(ident, nz)
    top = _crown(s, vol, math.pi * 0.92, math.pi * 2.08, 20)
    if style == "curly":  # a bumpy outline
        top[::2] += (top[::2] - (s.back * 0.25, HEAD_CY - 4)) * 0.06
    longer = style in ("long", "long_part")
    bottom = HEAD_CY + (ident["hair_len"] if longer else 12.0 + 8.0 * abs(s.sin))
    grow = 4.0 if longer else 0.0
    ends = _pts(top[-1, 0] + grow, bottom, top[0, 0] - grow, bottom)
    s.fill(np.concatenate([top, ends]), hair * 0.8, PLAIN)
    if style == "bun":
        s.fill(_ellipse(s.back * 0.4, HEAD_CY - s.b - 4, 11, 9), hair * 0.9, PLAIN)


def _front_hair(s: _Scene, ident: dict, nz: dict, hair: np.ndarray, hl: float) -> None:
    style = HAIR_STYLES[ident["style"]]
    if style == "bald":
        return
    a = s.a
    xs = _LIN13 * a
    r = np.abs(xs) / a
    y = hl + 9.0 * r**2
    if ident["_recede"] > 0:  # a receding hairline goes at the temples first (M shape)
        y = y - ident["_recede"] * (6.0 + 14.0 * np.exp(-(((r - 0.5) / 0.22) ** 2)))
    if ident["peak"]:
        y = y + 4.0 * np.exp(-((xs / 5.0) ** 2))
    if style in ("side_part", "long_part"):
        y = y + 7.0 * (np.clip(xs * ident["part"] / a, -1, 1) + 1) * 0.5 * (1 - r**4)
    if style == "bangs":
        y = np.minimum(y + 22.0, ident["eye_dy"] - ident["brow_dy"] - 2.5) + np.sin(xs * 0.9) * 0.8
    side = 14.0 if style in ("long", "long_part") else 6.0
    line = np.stack([xs, y], 1)
    ends = [s.outline_point(-a, side), s.outline_point(a, side)]
    arc = _crown(s, _hair_volume(ident, nz), 0.0, -math.pi, 15)
    poly = np.concatenate([_pts(*ends[0]), line, _pts(*ends[1]), arc])
    mode = np.full(len(poly), PLAIN, np.int8)
    mode[1:14] = FEAT
    colour = _mix(ident["_skin"], hair, 0.55) if style == "buzz" else hair
    s.fill(poly, colour, mode)
    if style != "buzz":  # a few strands: texture a network can pick up
        dark = hair * 0.7
        for k in range(1, 12, 2):
            x0, y0 = float(line[k, 0]), float(line[k, 1])
            s.stroke(_pts(x0, y0, x0 * 0.85, y0 - 12.0), dark)


def _ears(s: _Scene, ident: dict, front: bool) -> None:
    for sgn in (-1.0, 1.0):
        facing = -sgn * s.sin  # > 0 on the side turned towards the camera
        if front != (facing > 0.34) or facing < -0.34:
            continue
        cx, cy = s.feature_point(sgn * s.a, 4.0) if front else s.outline_point(sgn * s.a, 4.0)
        rx = 4.5 + 3.0 * max(0.0, facing)
        s.fill(_ellipse(cx, cy, rx, 9.0), ident["_skin"] * 0.93, PLAIN)
        s.stroke(_ellipse(cx, cy, rx * 0.6, 6.0)[3:13], ident["_skin"] * 0.75, 1, PLAIN)
        if ident["earrings"]:
            s.circle(cx, cy + 9.5, 2.2, ident["earring_colour"], PLAIN)


def _outline_points(ident: dict, a: float) -> np.ndarray:
    st, ct = _SIN32, _COS32
    width = np.where(st > 0, 1.0 - ident["jaw"] * np.maximum(st, 0.0) ** ident["chin_pow"],
                     ident["forehead"] + (1 - ident["forehead"]) * (1 - np.abs(st)))
    return np.stack([a * ct * width, HEAD_CY + ident["face_b"] * st], 1)


def _eyes(s: _Scene, ident: dict, nz: dict) -> None:
    skin = ident["_skin"]
    close = float(np.clip(nz["eye_close"], 0, 0.92))
    gx, gy = float(nz["gaze"][0]), float(nz["gaze"][1])
    for sgn in (-1.0, 1.0):
        cx, cy = sgn * ident["eye_dx"], ident["eye_dy"]
        if s.visible(cx, cy) < 0.2:
            continue
        w, h = ident["eye_w"], ident["eye_h"] * (1 - close)
        tilt = -sgn * ident["eye_tilt"]
        # socket shadow, the white, iris, pupil, then the upper lid
        s.fill(_ellipse(cx, cy - 0.5, w * 1.25, ident["eye_h"] * 1.7, tilt), skin * 0.88)
        s.fill(_ellipse(cx, cy, w, h, tilt), (225, 230, 235))
        ir = ident["eye_h"] * ident["iris"] * 1.3
        ix, iy = cx + gx * w * 0.4, cy + gy
        s.fill(_ellipse(ix, iy, ir, min(ir, h * 1.05)), ident["eye_colour"], dz=0.5)
        s.fill(_ellipse(ix, iy, ir * 0.45, min(ir * 0.45, h)), (15, 15, 15), dz=0.6)
        lid_thick = 1 + int(ident["masc"] < 0.5 and ident["eye_w"] > 7.0)
        s.stroke(_ellipse(cx, cy, w * 1.02, h * 1.05 + 0.2, tilt)[8:16], skin * 0.35, lid_thick)
        if close > 0.6:
            s.stroke(_ellipse(cx, cy, w, h, tilt)[0:9], skin * 0.5)


def _brows(s: _Scene, ident: dict, nz: dict, hair: np.ndarray) -> None:
    colour = _mix(ident["skin"], hair * 0.7, ident["brow_dark"])
    xs = _LIN6
    for sgn in (-1.0, 1.0):
        x0 = sgn * ident["eye_dx"]
        if s.visible(x0, -ident["brow_dy"]) < 0.2:
            continue
        x = x0 + sgn * (xs * ident["brow_len"] + 1.0)
        y = (ident["eye_dy"] - ident["brow_dy"] - 2.0 * nz["brow_raise"]
             - ident["brow_arch"] * 4.0 * (1 - (2 * xs) ** 2) + ident["brow_tilt"] * xs * 6.0)
        s.stroke(np.stack([x, y], 1), colour, ident["brow_thick"], dz=0.5)


def _nose(s: _Scene, ident: dict) -> None:
    skin = ident["_skin"]
    L, W, out = ident["nose_len"], ident["nose_w"], ident["nose_out"]
    shade = skin * 0.72
    # the ridge rises out of the surface towards the tip: it is what sticks out at profile
    t = _RAMP6
    ridge = np.stack([ident["nose_hook"] * np.sin(np.pi * t) * 1.5, 2.0 + t * (L - 2.0)], 1)
    rdz = out * t**1.3
    if abs(s.sin) > 0.25:
        wing = _pts(-W * 0.5 if s.sin > 0 else W * 0.5, L + 1.0)
        s.fill(np.concatenate([ridge, wing]), skin * 0.97, dz=np.append(rdz, 1.0))
        s.stroke(ridge, shade, dz=rdz)
    else:
        s.stroke(ridge[2:], skin * 0.85, dz=rdz[2:])
    for sgn in (-1.0, 1.0):
        if s.visible(sgn * W * 0.3, L) < 0.1:
            continue
        s.fill(_ellipse(sgn * W * 0.25, L + 0.8, W * 0.16, 1.0), skin * 0.45, dz=out * 0.4)
        s.stroke(_ellipse(sgn * W * 0.45, L - 0.5, W * 0.22, 2.6)[2:11], shade, dz=0.6)


def _mouth(s: _Scene, ident: dict, nz: dict) -> None:
    y0, w = ident["mouth_y"], ident["mouth_w"] * (1 + 0.12 * max(nz["smile"], 0))
    smile = ident["smile0"] + nz["smile"]
    op = 4.5 * nz["mouth_open"]
    xs = _LIN7
    mid = y0 - smile * 3.0 * (4 * xs**2)  # the corners go up with a smile
    bulge = 1 - (2 * xs) ** 2
    x = xs * w
    top = np.stack([x, mid - ident["lip_up"] * bulge - 0.3], 1)
    bottom = np.stack([x, mid + op + ident["lip_low"] * bulge + 0.3], 1)
    s.fill(np.concatenate([top, bottom[::-1]]), ident["lip"], dz=1.0)
    if op > 0.8:
        inner = np.concatenate([np.stack([x[1:-1], mid[1:-1] + 0.4], 1),
                                np.stack([x[-2:0:-1], mid[-2:0:-1] + op - 0.4], 1)])
        s.fill(inner, (40, 30, 60), dz=1.0)
        s.stroke(np.stack([x[2:-2], mid[2:-2] + 0.5], 1), (215, 225, 230), 1 + int(op > 2.5), dz=1.0)
    else:
        s.stroke(np.stack([x, mid], 1), ident["lip"] * 0.55, dz=1.0)


def _beard(s: _Scene, ident: dict, nz: dict, hair: np.ndarray, outline: np.ndarray) -> bool:
    """Draw facial hair; True when the mouth must be drawn again on top of it."""
    kind = BEARDS[ident["beard"]]
    y0, w, L = ident["mouth_y"], ident["mouth_w"], ident["nose_len"]
    colour = hair * 0.9
    if kind in ("stubble", "full"):
        # the jaw part of the outline (right to left), then a line under the cheeks
        jaw = outline[outline[:, 1] > L - 2]
        jaw = jaw[np.argsort(np.arctan2(jaw[:, 1] - HEAD_CY, jaw[:, 0]))]
        upper = _pts(jaw[-1, 0] * 0.9, L - 2, 0.0, L + 2.5, jaw[0, 0] * 0.9, L - 2)
        grow = float(np.clip(0.35 + nz["beard_grow"], 0.1, 0.7)) if kind == "stubble" else 1.0
        s.fill(np.concatenate([jaw, upper]), _mix(ident["_skin"], colour, grow), HALF)
        return True
    if kind in ("moustache", "goatee"):
        xs = _LIN7 * 1.1
        top = y0 - ident["lip_up"] - 4.5 + 1.5 * np.abs(xs)
        bot = y0 - ident["lip_up"] - 0.4 + 2.0 * (2 * xs) ** 2
        s.fill(np.concatenate([np.stack([xs * w, top], 1), np.stack([xs[::-1] * w, bot[::-1]], 1)]),
               colour, dz=1.0)
    if kind == "goatee":
        s.fill(_ellipse(0.0, y0 + ident["lip_low"] + 7.5, w * 0.28, 6.5), colour, dz=0.5)
    return False


def _wrinkles(s: _Scene, ident: dict, age: float) -> None:
    k = float(np.clip((age - 32.0) / 40.0, 0, 1)) * ident["wrinkle"]
    if k < 0.1:
        return
    line = ident["_skin"] * (1 - 0.28 * min(k, 1.0))
    xs = _LIN6 * 28.0
    for j in range(1 + int(k * 2.5)):  # forehead lines
        s.stroke(np.stack([xs, ident["eye_dy"] - ident["brow_dy"] - 7.0 - 4.0 * j + 0.01 * xs**2], 1), line)
    for sgn in (-1.0, 1.0):
        ex = sgn * (ident["eye_dx"] + ident["eye_w"] + 1.5)
        if s.visible(ex, 0) > 0.1:  # crow's feet
            for dy in (-2.0, 0.5, 3.0)[: 1 + int(k * 2)]:
                s.stroke(_pts(ex, dy * 0.6, ex + sgn * 4.0, dy), line)
        fold = _pts(sgn * ident["nose_w"] * 0.6, ident["nose_len"] - 1,
                    sgn * (ident["mouth_w"] * 0.5 + 2.5), ident["mouth_y"] + 1.5)
        if s.visible(float(fold[1, 0]), float(fold[1, 1])) > 0.1:  # nasolabial fold
            s.stroke(fold, line, dz=0.5)


def _glasses(s: _Scene, ident: dict, sunglasses: bool = False) -> None:
    colour = (20, 20, 20) if sunglasses else ident["glasses_colour"]
    thick = ident["glasses_thick"]
    seen = 0
    for sgn in (-1.0, 1.0):
        cx, cy = sgn * ident["eye_dx"], ident["eye_dy"] + 0.5
        if s.visible(cx, cy) < 0.2:
            continue
        seen += 1
        if ident["glasses_round"] and not sunglasses:
            rim = _ellipse(cx, cy, ident["eye_w"] + 3.0, ident["eye_w"] + 1.0)
        else:
            rx, ry = ident["eye_w"] + 3.5, 6.0 + ident["eye_h"]
            rim = _pts(cx - rx, cy - ry, cx + rx, cy - ry, cx + rx, cy + ry * 0.8,
                       cx + rx * 0.2, cy + ry, cx - rx, cy + ry * 0.8)
        if sunglasses:
            s.fill(rim, (25, 25, 30), dz=4.0)
        s.stroke(rim, colour, thick, dz=4.0, closed=True)
    if seen == 2:
        s.stroke(_pts(-4.0, ident["eye_dy"] - 1, 4.0, ident["eye_dy"] - 1), colour, thick, dz=5.0)
    if abs(s.sin) > 0.3:  # the temple arm towards the visible ear
        sgn = -1.0 if s.sin > 0 else 1.0
        arm = _pts(sgn * (ident["eye_dx"] + ident["eye_w"] + 3.0), ident["eye_dy"], sgn * s.a * 0.98, 2.0)
        s.stroke(arm, colour, thick, dz=np.array([4.0, 0.0], np.float32))


def _occluder(s: _Scene, ident: dict, nz: dict, rng: np.random.Generator) -> None:
    kind = nz["occluder"]
    if kind == "patch":  # anything: a sticker, a blurred region, a cut-out
        c = rng.uniform(20, 92, 2)
        rx, ry = rng.uniform(8, 22, 2)
        s.fill(_ellipse(c[0], c[1], rx, ry, rng.uniform(0, np.pi)), rng.uniform(0, 255, 3), IMAGE)
    elif kind == "hand":
        skin = _SKIN[int(rng.integers(len(_SKIN)))]
        side = float(rng.choice([-1.0, 1.0]))
        bx, by = side * rng.uniform(10, 35), rng.uniform(20, 55)
        s.fill(_ellipse(bx, by + 10, 16, 20, rng.uniform(-0.5, 0.5)), skin, PLAIN)
        for k in range(4):
            fx = bx - side * (8 - 6 * k)
            finger = _pts(fx, by - 5, fx + side * 4, by - 25 + 3 * abs(k - 1.5))
            s.stroke(finger, skin, 5, PLAIN)
            s.stroke(finger + (2.5, 0.0), skin * 0.8, 1, PLAIN)
    elif kind == "mask":
        colour = [np.array(c, np.float32) for c in ((230, 210, 170), (240, 240, 240), (40, 40, 40))]
        colour = (colour + [rng.uniform(0, 255, 3)])[int(rng.integers(4))]
        L, a = ident["nose_len"], s.a
        s.fill(_pts(-a * 0.95, L - 6, -10, L - 9, 0, L - 10, 10, L - 9, a * 0.95, L - 6, a * 0.8, 45,
                    0, 58, -a * 0.8, 45), colour, dz=2.0)
        for y in (L + 4.0, L + 14.0):  # pleats
            s.stroke(_pts(-20, y, 20, y), colour * 0.85, dz=2.5)
    elif kind == "sunglasses":
        _glasses(s, ident, sunglasses=True)
    elif kind == "hat":
        colour = rng.uniform(0, 255, 3)
        y = ident["eye_dy"] - ident["brow_dy"] - rng.uniform(4, 14)
        w = s.w_sil + 6
        s.fill(np.concatenate([_pts(w, y, -w, y), _ellipse(0, y, w, 35)[8:16][::-1]]), colour, PLAIN)
        s.fill(_pts(-w - 2, y, w + 2, y, w + 2, y + 3, -w - 2, y + 3) + (s.sin * 12, 0.0),
               colour * 0.7, PLAIN)
    elif kind == "object":  # a microphone or a cup in front of the lower face
        cx, cy = rng.uniform(-25, 25), rng.uniform(30, 60)
        colour = rng.uniform(0, 255, 3)
        s.fill(_ellipse(cx, cy, 9, 9), colour, PLAIN)
        s.stroke(_pts(cx, cy, cx + rng.uniform(-8, 8), cy + 60), colour * 0.6, 6, PLAIN)


_NOISE: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    # Drawing fresh Gaussian noise costs more than rendering the face; a fixed bank cropped at a
    # random offset per image is as good for a network and stays deterministic.
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(20230421).standard_normal((256, 256, 3), dtype=np.float32)
    return _NOISE


def _finish(img: np.ndarray, nz: dict, rng: np.random.Generator) -> np.ndarray:
    """Illumination gradient, colour jitter, grey-scale, blur and noise."""
    f = img.astype(np.float32)
    d = nz["light_dir"]
    light = (nz["ambient"] * 2.0 * nz["light"]) * (math.cos(d) * _GRID_X + math.sin(d) * _GRID_Y)
    light += nz["ambient"]
    # per-channel planes merged by OpenCV: numpy's broadcast over a last axis of 3 is 10x slower
    f *= cv2.merge([light * np.float32(g) for g in nz["gains"]])
    if nz["gray"]:
        f = cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if nz["blur"] > 0:
        f = cv2.GaussianBlur(f, (0, 0), nz["blur"])
    if nz["noise"] > 0.5:
        oy, ox = rng.integers(0, 256 - IMAGE_SIZE, 2)
        f += _noise_bank()[oy : oy + IMAGE_SIZE, ox : ox + IMAGE_SIZE] * np.float32(nz["noise"])
    np.clip(f, 0, 255, out=f)
    return f.astype(np.uint8)


def render(ident: dict, nz: dict, rng: np.random.Generator) -> np.ndarray:
    """Render one 112x112 BGR uint8 face of identity ``ident`` under nuisance ``nz``."""
    age = ident["age"] + nz["age_delta"]
    ageing = float(np.clip((age - 25.0) / 45.0, 0, 1))
    ident = dict(ident)
    # appearance drift with age: skin a little darker and duller, weight, receding hair
    ident["_skin"] = ident["skin"] * (1 - 0.08 * ageing) + 6.0 * ageing
    ident["_recede"] = ident["recede"] * float(np.clip((age - 22.0) / 35.0, 0, 1.2))
    hair = _hair_colour(ident, age)
    a = ident["face_a"] * (1 + 0.05 * (nz["weight"] + ageing * ident["weight_gain"]))
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    _background(img, nz, rng)
    s = _Scene(ident, nz, a)
    skin = ident["_skin"]
    shoulders = _pts(-70, 130, -58, 84, -20, 72, 20, 72, 58, 84, 70, 130) + (s.back * 0.2, 0.0)
    s.fill(shoulders, nz["clothes"], PLAIN)
    _back_hair(s, ident, nz, hair)
    neck = _pts(-a * 0.42, 30, a * 0.42, 30, a * 0.5, 80, -a * 0.5, 80) + (s.back * 0.3, 0.0)
    s.fill(neck, skin * 0.8, PLAIN)
    _ears(s, ident, front=False)
    outline = _outline_points(ident, a)
    s.fill(outline, skin, OUTL)
    if ident["blush"] > 0.05:
        blush = _mix(skin, np.array([120, 110, 230], np.float32), ident["blush"])
        for sgn in (-1.0, 1.0):
            if s.visible(sgn * 20, 22) > 0.2:
                s.fill(_ellipse(sgn * 20, 22, 7, 4), blush)
    _ears(s, ident, front=True)
    for x, y, r in ident["moles"]:
        if s.visible(float(x), float(y)) > 0.15:
            s.circle(float(x), float(y), float(r), skin * 0.45)
    _wrinkles(s, ident, age)
    _eyes(s, ident, nz)
    _brows(s, ident, nz, hair)
    _nose(s, ident)
    _mouth(s, ident, nz)
    if _beard(s, ident, nz, hair, outline):
        _mouth(s, ident, nz)
    _front_hair(s, ident, nz, hair, ident["hairline"] + nz["hairline"])
    if ident["glasses"] and not nz["glasses_off"] and nz["occluder"] != "sunglasses":
        _glasses(s, ident)
    if nz["occluder"]:
        _occluder(s, ident, nz, rng)
    s.draw(img)
    return _finish(img, nz, rng)


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """JPEG-encode a BGR image with OpenCV."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return buf.tobytes()


def render_identity_image(seed: int, identity: int, k: int, profile: str | NuisanceProfile = "train",
                          stream: int = STREAM_TRAIN, **override: Any) -> np.ndarray:
    """Render image ``k`` of ``identity`` under a named (or given) nuisance profile."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    ident = sample_identity(identity_rng(seed, identity))
    rng = image_rng(seed, stream, identity, k)
    return render(ident, sample_nuisance(rng, prof, **override), rng)
