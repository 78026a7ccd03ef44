"""Captions written from scene descriptions.

Every caption is true of its scene but describes only part of it, as human captions
do: it mentions a random subset of the objects (biased towards salient ones, at least
one, often not all), picks synonyms at random, drops attributes now and then, counts
repeated classes ("two dogs"), sometimes states one relation between two mentioned
objects ("a man riding a bike"), sometimes names the scene ("on the beach"), and uses
a handful of sentence templates. Captions are lower-case words separated by single
spaces, with no punctuation; the captions of one image are all different.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.seeds import Draw, python_rng

_RELATION_P = 0.4  # state a relation when the scene has a usable one
_INVERSE_P = 0.5  # state it from the other object's side ("a car right of a dog")
_N_MENTIONED_WEIGHTS = (0.35, 0.45, 0.2)  # mention 1, 2, 3 classes
_KEEP_ATTRIBUTE_P = 0.65
_SCENE_P = 0.5
_DEFINITE_P = 0.3
_VAGUE_COUNT_P = 0.25  # "several dogs" instead of "three dogs"
_EXTRA_OBJECT_P = 0.25
_TEMPLATE_WEIGHTS = (0.4, 0.15, 0.2, 0.25)  # plain, "there is", "a photo of", "a <scene> with"
_REL_TEMPLATE_WEIGHTS = (0.6, 0.2, 0.2)  # plain, "there is", "a photo of"
_PHOTO = ("a photo of", "a picture of", "an image of", "a view of")
_VAGUE = ("several", "some")
_MAX_TRIES_PER_CAPTION = 12


@dataclass(frozen=True)
class _Group:
    """The objects of one class in a scene (a count > 1 gives "two dogs")."""

    cls: lx.ObjectClass
    members: tuple[int, ...]
    shared: tuple[str, ...]  # attributes every member has
    saliency: float


def _groups(scene: dict) -> tuple[list[_Group], dict[int, int]]:
    objects = scene["objects"]
    order: list[str] = []
    members: dict[str, list[int]] = {}
    for i, obj in enumerate(objects):
        if obj["class"] not in members:
            order.append(obj["class"])
            members[obj["class"]] = []
        members[obj["class"]].append(i)
    groups, group_of = [], {}
    for name in order:
        idx = members[name]
        first = objects[idx[0]]["attributes"]
        shared = tuple(a for a in first if all(a in objects[i]["attributes"] for i in idx))
        for i in idx:
            group_of[i] = len(groups)
        groups.append(
            _Group(
                cls=lx.CLASSES[lx.CLASS_INDEX[name]],
                members=tuple(idx),
                shared=shared,
                saliency=max(objects[i]["saliency"] for i in idx),
            )
        )
    return groups, group_of


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(g: _Group, d: Draw, *, definite: bool = False) -> str:
    pre: list[str] = []
    post: list[str] = []
    for name in g.shared:
        if not d.chance(_KEEP_ATTRIBUTE_P):
            continue
        attr = lx.ATTRIBUTES[lx.ATTRIBUTE_INDEX[name]]
        word = d.pick(attr.words)
        if attr.placement == "post" or (attr.placement == "both" and d.chance(0.5)):
            post.append(word)
        else:
            pre.append(word)
    k = d.below(len(g.cls.nouns))
    count = len(g.members)
    if count == 1:
        head = " ".join([*pre, g.cls.nouns[k]])
        det = "the" if definite else _article(head)
    else:
        head = " ".join([*pre, g.cls.plurals[k]])
        det = d.pick(_VAGUE) if count >= 3 and d.chance(_VAGUE_COUNT_P) else lx.NUMBER_WORDS[count]
    return " ".join([det, head, *post])


def _join(nps: list[str], d: Draw, *, allow_with: bool = True) -> str:
    if len(nps) == 1:
        return nps[0]
    if len(nps) == 2:
        return f"{nps[0]} and {nps[1]}"
    glue = " with " if allow_with and d.chance(0.5) else " and "
    return nps[0] + glue + " and ".join(nps[1:])


@dataclass(frozen=True)
class _Scene:
    """What the caption writer needs of one scene, computed once per image."""

    stype: lx.SceneType
    groups: list[_Group]
    group_of: dict[int, int]
    group_weights: list[float]
    relations: list[list]  # relations between two single-instance classes
    relation_weights: list[float]

    @classmethod
    def of(cls, scene: dict) -> _Scene:
        groups, group_of = _groups(scene)
        objects = scene["objects"]
        rels = [
            r
            for r in scene["relations"]
            if len(groups[group_of[r[0]]].members) == 1 and len(groups[group_of[r[2]]].members) == 1
        ]
        return cls(
            stype=lx.SCENES[lx.SCENE_INDEX[scene["scene"]]],
            groups=groups,
            group_of=group_of,
            group_weights=[g.saliency**2 + 0.02 for g in groups],
            relations=rels,
            relation_weights=[objects[s]["saliency"] + objects[o]["saliency"] for s, _, o in rels],
        )


def _scene_phrase(sc: _Scene, d: Draw) -> str:
    return " " + d.pick(sc.stype.phrases) if d.chance(_SCENE_P) else ""


def _relation_caption(sc: _Scene, rel: list, d: Draw) -> str:
    subj, name, obj = rel
    relation = lx.RELATION_INDEX[name]
    if relation.inverse is not None and d.chance(_INVERSE_P):
        subj, obj, relation = obj, subj, lx.RELATION_INDEX[relation.inverse]
    groups = sc.groups
    gs, go = sc.group_of[subj], sc.group_of[obj]
    clause = f"{_noun_phrase(groups[gs], d)} {d.pick(relation.phrases)} " + _noun_phrase(
        groups[go], d, definite=d.chance(_DEFINITE_P)
    )
    others = [i for i in range(len(groups)) if i not in (gs, go)]
    if others and d.chance(_EXTRA_OBJECT_P):
        extra = others[d.weighted([sc.group_weights[i] for i in others])]
        clause += " and " + _noun_phrase(groups[extra], d)
    where = _scene_phrase(sc, d)
    t = d.weighted(_REL_TEMPLATE_WEIGHTS)
    if t == 0:
        return clause + where
    if t == 1:
        return f"there is {clause}{where}"
    return f"{d.pick(_PHOTO)} {clause}{where}"


def _caption(sc: _Scene, d: Draw) -> str:
    if sc.relations and d.chance(_RELATION_P):
        return _relation_caption(sc, sc.relations[d.weighted(sc.relation_weights)], d)
    k = 1 + d.weighted(_N_MENTIONED_WEIGHTS)
    chosen = d.sample_weighted(sc.group_weights, k)
    nps = [_noun_phrase(sc.groups[i], d) for i in chosen]
    t = d.weighted(_TEMPLATE_WEIGHTS)
    if t == 0:
        return _join(nps, d) + _scene_phrase(sc, d)
    if t == 1:
        verb = "are" if len(sc.groups[chosen[0]].members) > 1 else "is"
        return f"there {verb} {_join(nps, d)}{_scene_phrase(sc, d)}"
    if t == 2:
        return f"{d.pick(_PHOTO)} {_join(nps, d)}{_scene_phrase(sc, d)}"
    place = d.pick(sc.stype.words)
    return f"{_article(place)} {place} with {_join(nps, d, allow_with=False)}"


def caption(scene: dict, d: Draw) -> str:
    """One random caption of ``scene``."""
    return _caption(_Scene.of(scene), d)


def image_captions(scene: dict, d: Draw, n: int) -> list[str]:
    """``n`` different captions of one scene."""
    sc = _Scene.of(scene)
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(_MAX_TRIES_PER_CAPTION * n):
        text = _caption(sc, d)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    # A scene too plain to yield n different captions by chance: vary the opening.
    for prefix in (*_PHOTO, "a shot of", "a scene with", "a snapshot of"):
        text = f"{prefix} {out[0]}"
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise AssertionError("unreachable: the prefixes give enough distinct captions")


def write_captions(scenes: list[dict], *, seed: int, split: str, per_image: int = 5) -> list[str]:
    """``per_image`` captions for every scene, image by image (caption j -> image j // per_image)."""
    d = python_rng(seed, "captions", split)
    out: list[str] = []
    for scene in scenes:
        out.extend(image_captions(scene, d, per_image))
    return out
