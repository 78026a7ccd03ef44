"""Image features of the synthetic world: region features and global features.

Every concept (super-category, class, attribute, scene type) has a latent vector in
R^LATENT_DIM drawn from the world seed. A class vector is its super-category vector
plus a class offset, so classes of one super-category are close (hard negatives);
an attribute vector is its group vector plus an offset, so "red" is closer to "blue"
than to "wooden".

- Region features, ``(N, R, region_dim)`` float32, non-negative: each object gets
  1..4 proposal boxes jittered around its box; a proposal's feature is a fixed random
  2-layer map F (tanh hidden layer, ReLU output) of its object's latent (class +
  attributes) mixed with the scene latent by how well the proposal overlaps the
  object, plus noise. The other proposals show background (the scene latent) or
  clutter (small objects no caption mentions). Proposals are sorted by a
  detector-like confidence and the top R kept.
- Global features, ``(N, global_dim)`` float32, non-negative: a different fixed map G
  of the saliency-weighted sum of the object latents, each multiplied by a
  scene-dependent context gate ("objects look different in different scenes"), plus
  the scene latent and noise. The gate is what makes a linear read-out of these
  features measurably worse than a 2-layer MLP.

All arithmetic is float64 and results are rounded to 4 decimals before the cast to
float32, so last-bit differences between BLAS or libm builds cannot change the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.seeds import numpy_rng

LATENT_DIM = 64
REGION_HIDDEN = 128
GLOBAL_HIDDEN = 256
MAX_REGIONS_PER_OBJECT = 4
MAX_OBJECTS = 6
MAX_CLUTTER = 3
FEATURE_DECIMALS = 4
BOX_DECIMALS = 3

_CLASS_OFFSET = 0.75  # class = category + 0.75 * offset
_ATTR_GROUP, _ATTR_OWN = 0.35, 0.55  # attribute = 0.35 * group + 0.55 * offset
_NUISANCE = 0.25  # per-image nuisance direction shared by all its features
_REGION_NOISE = {0: 0.35, 1: 0.35, 2: 0.6}  # object, clutter, background
_GLOBAL_IN_NOISE, _GLOBAL_OUT_NOISE = 0.15, 0.1
_GLOBAL_SCENE = 0.7
_REGION_GAIN, _GLOBAL_GAIN = 1.0, 1.0  # input gain of the tanh layer
_CONTEXT_SHARPNESS = 3.0  # the context gate is nearly a per-scene sign pattern
_CHUNK_IMAGES = 1024  # fixed: the noise stream is drawn chunk by chunk
_MAP_ROWS = 2048

OBJECT, CLUTTER, BACKGROUND = 0, 1, 2


@dataclass(frozen=True)
class _Map:
    """A fixed random 2-layer map ``relu(tanh(z W1 + b1) W2 + b2)``."""

    w1: np.ndarray  # (LATENT_DIM, H)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (H, D)
    b2: np.ndarray  # (D,)

    @classmethod
    def draw(cls, rng: np.random.Generator, hidden: int, out_dim: int, gain: float) -> _Map:
        w1 = rng.standard_normal((LATENT_DIM, hidden)) * (gain / np.sqrt(LATENT_DIM))
        b1 = rng.standard_normal(hidden) * 0.3
        w2 = rng.standard_normal((hidden, out_dim)) * (1.5 / np.sqrt(hidden))
        b2 = rng.standard_normal(out_dim) * 0.1 - 0.1
        return cls(w1, b1, w2, b2)

    def __call__(self, z: np.ndarray, out_noise: np.ndarray | None = None) -> np.ndarray:
        """z (n, LATENT_DIM) float64 -> (n, D) float64, non-negative."""
        out = np.empty((len(z), self.w2.shape[1]))
        for lo in range(0, len(z), _MAP_ROWS):  # row blocks that stay in cache: ~3x faster
            pre = np.tanh(z[lo : lo + _MAP_ROWS] @ self.w1 + self.b1) @ self.w2 + self.b2
            if out_noise is not None:
                pre += out_noise[lo : lo + _MAP_ROWS]
            out[lo : lo + _MAP_ROWS] = np.maximum(pre, 0.0)
        return out


@dataclass(frozen=True)
class FeatureSpace:
    """Concept latents and the two feature maps of one world.

    Latent tables carry one extra all-zero row at the end, used for "no class" /
    "no attribute" (index -1).
    """

    classes: np.ndarray  # (n_classes + 1, LATENT_DIM)
    attributes: np.ndarray  # (n_attributes + 1, LATENT_DIM)
    scenes: np.ndarray  # (n_scenes, LATENT_DIM)
    context_gate: np.ndarray  # (n_scenes, LATENT_DIM) in (-1, 1)
    region_map: _Map
    global_map: _Map

    @classmethod
    def build(cls, seed: int, *, region_dim: int, global_dim: int) -> FeatureSpace:
        rng = numpy_rng(seed, "latents")
        k = LATENT_DIM
        categories = rng.standard_normal((len(lx.CATEGORIES), k))
        offsets = rng.standard_normal((len(lx.CLASSES), k))
        cat_of = np.array([lx.CATEGORY_INDEX[c.category] for c in lx.CLASSES])
        classes = categories[cat_of] + _CLASS_OFFSET * offsets
        groups = rng.standard_normal((len(lx.ATTRIBUTE_GROUPS), k))
        own = rng.standard_normal((len(lx.ATTRIBUTES), k))
        group_of = np.array([lx.GROUP_INDEX[a.group] for a in lx.ATTRIBUTES])
        attributes = _ATTR_GROUP * groups[group_of] + _ATTR_OWN * own
        scenes = rng.standard_normal((len(lx.SCENES), k))
        zero = np.zeros((1, k))
        mix = numpy_rng(seed, "map", "context").standard_normal((k, k)) / np.sqrt(k)
        return cls(
            classes=np.concatenate([classes, zero]),
            attributes=np.concatenate([attributes, zero]),
            scenes=scenes,
            context_gate=np.tanh(_CONTEXT_SHARPNESS * (scenes @ mix)),
            region_map=_Map.draw(numpy_rng(seed, "map", "regions"), REGION_HIDDEN, region_dim, _REGION_GAIN),
            global_map=_Map.draw(numpy_rng(seed, "map", "global"), GLOBAL_HIDDEN, global_dim, _GLOBAL_GAIN),
        )


@dataclass
class _Objects:
    """The objects (or clutter items) of a split, flattened: one row per object."""

    image: np.ndarray  # (M,) int64
    local: np.ndarray  # (M,) int64, index inside its scene
    cls: np.ndarray  # (M,) int64
    attrs: np.ndarray  # (M, 2) int64, -1 = none
    box: np.ndarray  # (M, 4) float64
    saliency: np.ndarray  # (M,) float64

    @classmethod
    def collect(cls, scenes: list[dict], key: str) -> _Objects:
        image, local, klass, attrs, box, sal = [], [], [], [], [], []
        for n, scene in enumerate(scenes):
            for i, obj in enumerate(scene[key]):
                image.append(n)
                local.append(i)
                klass.append(lx.CLASS_INDEX[obj["class"]])
                a = [lx.ATTRIBUTE_INDEX[name] for name in obj.get("attributes", ())]
                attrs.append((a + [-1, -1])[:2])
                box.append(obj["box"])
                sal.append(obj.get("saliency", 0.0))
        return cls(
            image=np.array(image, dtype=np.int64),
            local=np.array(local, dtype=np.int64),
            cls=np.array(klass, dtype=np.int64),
            attrs=np.array(attrs, dtype=np.int64).reshape(-1, 2),
            box=np.array(box, dtype=np.float64).reshape(-1, 4),
            saliency=np.array(sal, dtype=np.float64),
        )


def _jitter(rng: np.random.Generator, box: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Boxes (n, 4) moved by noise proportional to their size; kept valid and inside [0, 1]."""
    w = box[:, 2] - box[:, 0]
    h = box[:, 3] - box[:, 1]
    size = np.stack([w, h, w, h], axis=1)
    out = np.clip(box + rng.standard_normal(box.shape) * size * scale[:, None], 0.0, 1.0)
    x0, x1 = np.minimum(out[:, 0], out[:, 2]), np.maximum(out[:, 0], out[:, 2])
    y0, y1 = np.minimum(out[:, 1], out[:, 3]), np.maximum(out[:, 1], out[:, 3])
    x1 = np.maximum(x1, np.minimum(x0 + 0.01, 1.0))
    y1 = np.maximum(y1, np.minimum(y0 + 0.01, 1.0))
    x0, y0 = np.minimum(x0, x1 - 0.01), np.minimum(y0, y1 - 0.01)
    return np.stack([x0, y0, x1, y1], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes a (n, 4) and b (n, 4)."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def _semantics(space: FeatureSpace, objs: _Objects) -> np.ndarray:
    """(M, k): class latent plus attribute latents of every object."""
    return space.classes[objs.cls] + space.attributes[objs.attrs[:, 0]] + space.attributes[objs.attrs[:, 1]]


def _round32(x: np.ndarray, decimals: int = FEATURE_DECIMALS) -> np.ndarray:
    return np.round(x, decimals).astype(np.float32)


def _nuisance(seed: int, split: str, n: int) -> np.ndarray:
    return numpy_rng(seed, "nuisance", split).standard_normal((n, LATENT_DIM)) * _NUISANCE


def region_features(
    scenes: list[dict], space: FeatureSpace, *, seed: int, split: str, regions: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Region features of a split and what its regions show.

    Returns ``feats`` (N, R, region_dim) float32 and per-region annotations:
    ``region_boxes`` (N, R, 4) float32 ``[x0, y0, x1, y1]`` in the unit square;
    ``region_scores`` (N, R) float32 detector-like confidence, falling along R;
    ``region_object`` (N, R) int8, index into the scene's ``objects`` (-1: none);
    ``region_clutter`` (N, R) int8, index into the scene's ``clutter`` (-1: none).
    A region with both indices -1 shows background.
    """
    n_img = len(scenes)
    cand = max(regions, MAX_OBJECTS * MAX_REGIONS_PER_OBJECT + MAX_CLUTTER)
    rng = numpy_rng(seed, "regions", split)
    objs = _Objects.collect(scenes, "objects")
    clut = _Objects.collect(scenes, "clutter")

    # how many proposals each object gets: 1..4, more for salient objects
    span = 1 + np.floor(3.0 * objs.saliency).astype(np.int64)
    counts = 1 + np.minimum(np.floor(rng.random(len(objs.cls)) * span).astype(np.int64), span - 1)
    obj_of_reg = np.repeat(np.arange(len(objs.cls)), counts)
    starts = np.cumsum(counts) - counts
    first = np.arange(len(obj_of_reg)) == np.repeat(starts, counts)  # the tight proposal
    per_img = np.bincount(objs.image[obj_of_reg], minlength=n_img) + np.bincount(clut.image, minlength=n_img)
    n_bg = cand - per_img
    bg_img = np.repeat(np.arange(n_img), n_bg)

    # source box of every candidate, then proposal boxes jittered around it
    obj_boxes = _jitter(rng, objs.box[obj_of_reg], np.where(first, 0.04, 0.15))
    clu_boxes = _jitter(rng, clut.box, np.full(len(clut.cls), 0.1))
    xy = rng.random((len(bg_img), 2)) * 0.7
    wh = 0.3 + rng.random((len(bg_img), 2)) * 0.7
    bg_boxes = np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1)
    obj_iou = _iou(obj_boxes, objs.box[obj_of_reg])
    clu_iou = _iou(clu_boxes, clut.box)

    n_obj_reg, n_clu = len(obj_of_reg), len(clut.cls)
    kind = np.concatenate(
        [np.full(n_obj_reg, OBJECT), np.full(n_clu, CLUTTER), np.full(len(bg_img), BACKGROUND)]
    )
    image = np.concatenate([objs.image[obj_of_reg], clut.image, bg_img])
    boxes = np.concatenate([obj_boxes, clu_boxes, bg_boxes])
    iou = np.concatenate([obj_iou, clu_iou, np.zeros(len(bg_img))])
    obj_local = np.concatenate([objs.local[obj_of_reg], np.full(n_clu + len(bg_img), -1)])
    clu_local = np.concatenate([np.full(n_obj_reg, -1), clut.local, np.full(len(bg_img), -1)])
    sal = np.concatenate([objs.saliency[obj_of_reg], np.zeros(n_clu + len(bg_img))])
    noise = rng.standard_normal(len(kind))
    score = np.where(
        kind == OBJECT,
        0.55 + 0.25 * sal + 0.2 * iou + 0.05 * noise,
        np.where(kind == CLUTTER, 0.35 + 0.25 * iou + 0.08 * noise, 0.45 * rng.random(len(kind))),
    )
    score = np.clip(score, 0.0, 1.0)

    # group by image (each image has exactly `cand` candidates), sort by confidence, keep top R
    by_image = np.argsort(image, kind="stable").reshape(n_img, cand)
    order = np.argsort(-score[by_image], axis=1, kind="stable")[:, :regions]
    keep = np.take_along_axis(by_image, order, axis=1)  # (N, R) candidate ids

    # latent input of every kept region: a * semantics + b * scene + nuisance + c * noise,
    # where a falls and b rises as the proposal drifts off its object (IoU)
    a = 0.4 + 0.6 * iou
    sem_coef = np.where(kind == OBJECT, a, np.where(kind == CLUTTER, 0.8 * a, 0.0))[keep].reshape(-1, 1)
    scene_coef = np.where(kind == BACKGROUND, 1.0, 0.5 * (1.0 - a))[keep].reshape(-1, 1)
    noise_coef = np.array([_REGION_NOISE[k] for k in (OBJECT, CLUTTER, BACKGROUND)])[kind][keep].reshape(-1, 1)
    # clutter carries no attributes, so its semantics is its class latent
    sem_table = np.concatenate([_semantics(space, objs), _semantics(space, clut), np.zeros((1, LATENT_DIM))])
    sem_row = np.concatenate(
        [obj_of_reg, len(objs.cls) + np.arange(n_clu), np.full(len(bg_img), len(objs.cls) + n_clu)]
    )[keep].reshape(-1)
    scene_idx = np.array([lx.SCENE_INDEX[s["scene"]] for s in scenes], dtype=np.int64)
    context = space.scenes[scene_idx]  # (N, k)
    nuisance = _nuisance(seed, split, n_img)

    region_dim = space.region_map.w2.shape[1]
    feats = np.empty((n_img * regions, region_dim), dtype=np.float32)
    noise_rng = numpy_rng(seed, "region-noise", split)
    for lo in range(0, n_img, _CHUNK_IMAGES):
        hi = min(lo + _CHUNK_IMAGES, n_img)
        noise = noise_rng.standard_normal(((hi - lo) * regions, LATENT_DIM))
        for r0 in range(lo * regions, hi * regions, _MAP_ROWS):  # row blocks that stay in cache
            r1 = min(r0 + _MAP_ROWS, hi * regions)
            img = np.arange(r0, r1) // regions
            z = sem_coef[r0:r1] * sem_table[sem_row[r0:r1]]
            z += scene_coef[r0:r1] * context[img]
            z += nuisance[img]
            z += noise_coef[r0:r1] * noise[r0 - lo * regions : r1 - lo * regions]
            feats[r0:r1] = _round32(space.region_map(z))
    feats = feats.reshape(n_img, regions, region_dim)

    info = {
        "region_boxes": _round32(boxes[keep], BOX_DECIMALS),
        "region_scores": _round32(score[keep], BOX_DECIMALS),
        "region_object": obj_local[keep].astype(np.int8),
        "region_clutter": clu_local[keep].astype(np.int8),
    }
    return feats, info


def global_features(scenes: list[dict], space: FeatureSpace, *, seed: int, split: str) -> np.ndarray:
    """Global features (N, global_dim) float32 of a split's scenes.

    ``G(gate(scene) * sum_o w_o (class_o + attributes_o) + 0.7 scene + nuisance + noise)``
    (plus output noise before G's ReLU) with ``w_o = saliency_o / sqrt(sum saliency^2)``
    over the image's objects. The context gate multiplies every latent dimension by a
    scene-dependent factor in (-1, 1), mostly near +-1: objects "look different" in
    different scenes, which a linear read-out cannot undo but a non-linear one can.
    """
    n_img = len(scenes)
    objs = _Objects.collect(scenes, "objects")
    norm = np.sqrt(np.bincount(objs.image, weights=objs.saliency**2, minlength=n_img))
    weight = objs.saliency / norm[objs.image]
    scene_idx = np.array([lx.SCENE_INDEX[s["scene"]] for s in scenes], dtype=np.int64)
    sem = _semantics(space, objs) * space.context_gate[scene_idx[objs.image]]
    z = np.zeros((n_img, LATENT_DIM))
    np.add.at(z, objs.image, weight[:, None] * sem)
    rng = numpy_rng(seed, "global", split)
    z += _GLOBAL_SCENE * space.scenes[scene_idx] + _nuisance(seed, split, n_img)
    z += _GLOBAL_IN_NOISE * rng.standard_normal(z.shape)
    global_dim = space.global_map.w2.shape[1]
    out_noise = _GLOBAL_OUT_NOISE * rng.standard_normal((n_img, global_dim))
    return _round32(space.global_map(z, out_noise))
