"""Tests of xmrbench.core.losses.aoq: the AOQ losses against naive per-pair loops, the
AdapOffQuin gradients against their closed forms (AOQ Eq. 6), a hand-checked case,
negative adaptive weights, and input errors."""

from __future__ import annotations

import pytest
import torch

from xmrbench.core.losses.aoq import (
    LOSSES,
    QuintupletScores,
    adapoffquin,
    offquin,
    offtri,
    online,
)

FIELDS = ("pos", "t_on", "i_on", "t_off", "i_off", "pair_a", "pair_b")
# Each negative score, and the margin of the one hinge it enters ([margin - pos + neg]_+).
HINGES = {
    "t_on": "gamma1",
    "i_on": "gamma1",
    "t_off": "gamma2",
    "i_off": "gamma2",
    "pair_a": "gamma2",
    "pair_b": "gamma2",
}
PAPER = {"gamma1": 0.2, "gamma2": 0.0, "alpha": 0.3, "beta": 1.5}
OTHER = {"gamma1": 0.25, "gamma2": 0.05, "alpha": 0.4, "beta": 1.2}
P = 7
TOL = 1e-12


def relu(x: float) -> float:
    return max(0.0, x)


def ind(x: float) -> float:
    return 1.0 if x > 0 else 0.0


def random_scores(seed: int, margins: dict[str, float], n: int = P) -> dict[str, torch.Tensor]:
    """Random float64 ``(n,)`` scores whose hinge arguments ``margin - pos + neg`` lie in
    ``±[0.01, 0.3]`` with random signs, at least one active and one inactive per hinge, so
    no argument is near a kink."""
    gen = torch.Generator().manual_seed(seed)
    pos = 0.2 + 0.6 * torch.rand(n, generator=gen, dtype=torch.float64)
    out = {"pos": pos}
    for name, margin in HINGES.items():
        size = 0.01 + 0.29 * torch.rand(n, generator=gen, dtype=torch.float64)
        sign = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
        sign[0], sign[1] = 1.0, -1.0
        out[name] = pos - margins[margin] + sign * size
    return out


def hinge_args(raw: dict[str, torch.Tensor], margins: dict[str, float]) -> dict[str, torch.Tensor]:
    return {name: margins[margin] - raw["pos"] + raw[name] for name, margin in HINGES.items()}


def leaves(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone().requires_grad_(True) for k, v in raw.items()}


# --------------------------------------------------------------------------- naive loops


def naive_rows(raw: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    cols = {k: v.tolist() for k, v in raw.items()}
    return [{k: cols[k][p] for k in cols} for p in range(len(cols["pos"]))]


def naive_online(r, gamma1):
    return relu(gamma1 - r["pos"] + r["t_on"]) + relu(gamma1 - r["pos"] + r["i_on"])


def naive_offtri(r, gamma1, gamma2, online=True):
    loss = relu(gamma2 - r["pos"] + r["t_off"]) + relu(gamma2 - r["pos"] + r["i_off"])
    return loss + (naive_online(r, gamma1) if online else 0.0)


def naive_offquin(r, gamma1, gamma2, online=True):
    line_i = relu(gamma2 - r["pos"] + r["t_off"]) + relu(gamma2 - r["pos"] + r["pair_a"])
    line_t = relu(gamma2 - r["pos"] + r["i_off"]) + relu(gamma2 - r["pos"] + r["pair_b"])
    if online:
        line_i += relu(gamma1 - r["pos"] + r["t_on"])
        line_t += relu(gamma1 - r["pos"] + r["i_on"])
    return line_i + line_t


def naive_adapoffquin(r, gamma1, gamma2, alpha, beta, reference="offline", online=True):
    ref_t = r["t_off"] if reference == "offline" else r["pos"]
    ref_i = r["i_off"] if reference == "offline" else r["pos"]
    line_i = relu(gamma2 - r["pos"] + r["t_off"]) + relu(gamma2 - r["pos"] + r["pair_a"])
    line_t = relu(gamma2 - r["pos"] + r["i_off"]) + relu(gamma2 - r["pos"] + r["pair_b"])
    if online:
        line_i += (beta - (ref_t - r["t_on"]) / alpha) * relu(gamma1 - r["pos"] + r["t_on"])
        line_t += (beta - (ref_i - r["i_on"]) / alpha) * relu(gamma1 - r["pos"] + r["i_on"])
    return line_i + line_t


CASES = [
    ("online", online, naive_online, ("gamma1",), {}),
    ("offtri", offtri, naive_offtri, ("gamma1", "gamma2"), {}),
    ("offtri", offtri, naive_offtri, ("gamma1", "gamma2"), {"online": False}),
    ("offquin", offquin, naive_offquin, ("gamma1", "gamma2"), {}),
    ("offquin", offquin, naive_offquin, ("gamma1", "gamma2"), {"online": False}),
    ("adapoffquin", adapoffquin, naive_adapoffquin, ("gamma1", "gamma2", "alpha", "beta"), {}),
    ("adapoffquin", adapoffquin, naive_adapoffquin, ("gamma1", "gamma2", "alpha", "beta"), {"online": False}),
    ("adapoffquin", adapoffquin, naive_adapoffquin, ("gamma1", "gamma2", "alpha", "beta"), {"reference": "positive"}),
    (
        "adapoffquin",
        adapoffquin,
        naive_adapoffquin,
        ("gamma1", "gamma2", "alpha", "beta"),
        {"reference": "positive", "online": False},
    ),
]


@pytest.mark.parametrize("margins", [PAPER, OTHER], ids=["paper", "other"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "fn", "naive", "keys", "extra"), CASES)
def test_matches_naive_loop(name, fn, naive, keys, extra, seed, margins):
    raw = random_scores(seed, margins)
    for arg_name, arg in hinge_args(raw, margins).items():
        assert (arg > 0).any() and (arg < 0).any(), f"{arg_name}: want active and inactive hinges"
    kw = {k: margins[k] for k in keys}
    got = fn(QuintupletScores(**raw), **kw, **extra)
    want = torch.tensor([naive(r, **kw, **extra) for r in naive_rows(raw)], dtype=torch.float64)
    assert got.shape == (P,) and got.dtype == torch.float64
    assert LOSSES[name] is fn
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_variants_differ_from_full_loss():
    """The switches change the value on these inputs, so the loop comparisons above see them."""
    raw = random_scores(0, PAPER)
    s = QuintupletScores(**raw)
    full = adapoffquin(s, **PAPER)
    assert not torch.allclose(full, adapoffquin(s, **PAPER, online=False))
    assert not torch.allclose(full, adapoffquin(s, **PAPER, reference="positive"))
    assert not torch.allclose(full, offquin(s, gamma1=0.2, gamma2=0.0))
    assert not torch.allclose(offquin(s, gamma1=0.2, gamma2=0.0), offtri(s, gamma1=0.2, gamma2=0.0))


# --------------------------------------------------------------------------- gradients (Eq. 6)


def closed_form_grads(raw, margins, reference="offline"):
    """d(sum of losses)/d(field), per pair, from the hand-derived formulas.

    Image-anchored line, I1 = 1[online hinge], I2 = 1[hinge on t_off], I3 = 1[hinge on pair_a]:
    reference "offline" (AOQ Eq. 6):
      dS(i,t)     = ((S(i,t_off) - S(i,t_on)) / a - b) I1 - I2 - I3
      dS(i,t_off) = ((S(i,t) - S(i,t_on)) / a - g1 / a) I1 + I2
      dS(i,t_on)  = ((2 S(i,t_on) - S(i,t) - S(i,t_off)) / a + b + g1 / a) I1
    reference "positive" (weight b - (S(i,t) - S(i,t_on)) / a):
      dS(i,t)     = ((2 (S(i,t) - S(i,t_on)) - g1) / a - b) I1 - I2 - I3
      dS(i,t_off) = I2
      dS(i,t_on)  = ((g1 - 2 (S(i,t) - S(i,t_on))) / a + b) I1
    and dS(i_off,t_off) = I3. The text-anchored line is the same with i_off, i_on, pair_b.
    Returns the total for ``pos`` and the parts of each line under "pos_i" / "pos_t".
    """
    g1, g2, a, b = margins["gamma1"], margins["gamma2"], margins["alpha"], margins["beta"]
    out = {k: [] for k in (*FIELDS, "pos_i", "pos_t")}
    for r in naive_rows(raw):
        s = r["pos"]
        parts = {}
        for on, off, pair, line in (("t_on", "t_off", "pair_a", "i"), ("i_on", "i_off", "pair_b", "t")):
            n_on, n_off, n_pair = r[on], r[off], r[pair]
            i1, i2, i3 = ind(g1 - s + n_on), ind(g2 - s + n_off), ind(g2 - s + n_pair)
            if reference == "offline":
                d_pos = ((n_off - n_on) / a - b) * i1 - i2 - i3
                d_off = ((s - n_on) / a - g1 / a) * i1 + i2
                d_on = ((2 * n_on - s - n_off) / a + b + g1 / a) * i1
            else:
                d_pos = ((2 * (s - n_on) - g1) / a - b) * i1 - i2 - i3
                d_off = i2
                d_on = ((g1 - 2 * (s - n_on)) / a + b) * i1
            parts[line] = d_pos
            out[on].append(d_on)
            out[off].append(d_off)
            out[pair].append(i3)
        out["pos_i"].append(parts["i"])
        out["pos_t"].append(parts["t"])
        out["pos"].append(parts["i"] + parts["t"])
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def autograd_grads(raw, margins, **extra):
    x = leaves(raw)
    adapoffquin(QuintupletScores(**x), **margins, **extra).sum().backward()
    return {k: v.grad for k, v in x.items()}


def assert_away_from_kinks(raw, margins):
    for name, arg in hinge_args(raw, margins).items():
        assert (arg.abs() > 1e-3).all(), f"{name}: a hinge argument is too close to 0"
        assert (arg > 0).any() and (arg < 0).any(), f"{name}: want active and inactive hinges"


@pytest.mark.parametrize("reference", ["offline", "positive"])
@pytest.mark.parametrize("margins", [PAPER, OTHER], ids=["paper", "other"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adapoffquin_gradients_match_eq6(seed, margins, reference):
    raw = random_scores(seed, margins)
    assert_away_from_kinks(raw, margins)
    got = autograd_grads(raw, margins, reference=reference)
    want = closed_form_grads(raw, margins, reference)
    for name in FIELDS:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=TOL, msg=f"d/d{name}")


@pytest.mark.parametrize("reference", ["offline", "positive"])
@pytest.mark.parametrize(
    ("line", "other_fields"), [("pos_i", ("i_on", "i_off", "pair_b")), ("pos_t", ("t_on", "t_off", "pair_a"))]
)
def test_adapoffquin_gradient_of_one_line_wrt_positive(line, other_fields, reference):
    """With every hinge of the other line inactive, d/dS(i,t) is this line's part alone."""
    raw = random_scores(3, PAPER)
    for name in other_fields:
        raw[name] = raw["pos"] - 0.5
    assert all((arg.abs() > 1e-3).all() for arg in hinge_args(raw, PAPER).values())
    got = autograd_grads(raw, PAPER, reference=reference)
    want = closed_form_grads(raw, PAPER, reference)
    assert (want[line] != 0).any()
    torch.testing.assert_close(got["pos"], want[line], rtol=0, atol=TOL)
    for name in other_fields:
        assert (got[name] == 0).all()


HINGE_TERMS = {
    "online": ("t_on", "i_on"),
    "offtri": ("t_on", "i_on", "t_off", "i_off"),
    "offquin": ("t_on", "i_on", "t_off", "i_off", "pair_a", "pair_b"),
}


@pytest.mark.parametrize(
    ("name", "online_terms"),
    [("online", True), ("offtri", True), ("offtri", False), ("offquin", True), ("offquin", False)],
)
def test_plain_hinge_gradients(name, online_terms):
    """Each active hinge [g - S(i,t) + S(neg)]_+ gives -1 to S(i,t) and +1 to S(neg)."""
    raw = random_scores(4, PAPER)
    assert_away_from_kinks(raw, PAPER)
    x = leaves(raw)
    kw = {"gamma1": PAPER["gamma1"]} if name == "online" else {"gamma1": PAPER["gamma1"], "gamma2": PAPER["gamma2"]}
    if name != "online":
        kw["online"] = online_terms
    LOSSES[name](QuintupletScores(**x), **kw).sum().backward()
    used = [n for n in HINGE_TERMS[name] if online_terms or n not in ("t_on", "i_on")]
    active = {n: (a > 0).to(torch.float64) for n, a in hinge_args(raw, PAPER).items()}
    for n in FIELDS[1:]:
        want = active[n] if n in used else torch.zeros(P, dtype=torch.float64)
        if n in used:
            torch.testing.assert_close(x[n].grad, want, rtol=0, atol=TOL, msg=f"d/d{n}")
        else:
            assert x[n].grad is None or (x[n].grad == 0).all(), f"d/d{n} should be 0"
    torch.testing.assert_close(x["pos"].grad, -sum(active[n] for n in used), rtol=0, atol=TOL)


# --------------------------------------------------------------------------- hand-checked case

HAND = {"pos": 0.5, "t_on": 0.45, "i_on": 0.35, "t_off": 0.63, "i_off": 0.38, "pair_a": 0.3, "pair_b": 0.55}
# g1 = 0.2, g2 = 0, a = 0.3, b = 1.5. Hinge arguments:
#   online  t: 0.2 - 0.5 + 0.45 = 0.15    online  i: 0.2 - 0.5 + 0.35 = 0.05
#   offline t: 0 - 0.5 + 0.63 = 0.13      offline i: 0 - 0.5 + 0.38 = -0.12 -> 0
#   pair_a:    0 - 0.5 + 0.30 = -0.2 -> 0 pair_b:    0 - 0.5 + 0.55 = 0.05
# online                  = 0.15 + 0.05                         = 0.2
# offtri                  = 0.2 + 0.13 + 0                      = 0.33   (offline only: 0.13)
# offquin                 = 0.33 + 0 + 0.05                     = 0.38   (offline only: 0.18)
# adapoffquin weights: 1.5 - (0.63 - 0.45)/0.3 = 0.9, 1.5 - (0.38 - 0.35)/0.3 = 1.4
#   = 0.9 * 0.15 + 1.4 * 0.05 + 0.13 + 0.05 = 0.135 + 0.07 + 0.18  = 0.385  (offline only: 0.18)
# "positive" weights: 1.5 - (0.5 - 0.45)/0.3 = 4/3, 1.5 - (0.5 - 0.35)/0.3 = 1.0
#   = 4/3 * 0.15 + 1.0 * 0.05 + 0.18 = 0.2 + 0.05 + 0.18           = 0.43
HAND_EXPECTED = [
    (online, {"gamma1": 0.2}, 0.2),
    (offtri, {"gamma1": 0.2, "gamma2": 0.0}, 0.33),
    (offtri, {"gamma1": 0.2, "gamma2": 0.0, "online": False}, 0.13),
    (offquin, {"gamma1": 0.2, "gamma2": 0.0}, 0.38),
    (offquin, {"gamma1": 0.2, "gamma2": 0.0, "online": False}, 0.18),
    (adapoffquin, PAPER, 0.385),
    (adapoffquin, {**PAPER, "online": False}, 0.18),
    (adapoffquin, {**PAPER, "reference": "positive"}, 0.43),
]


@pytest.mark.parametrize(("fn", "kw", "expected"), HAND_EXPECTED)
def test_hand_checked(fn, kw, expected):
    s = QuintupletScores(**{k: torch.tensor([v], dtype=torch.float64) for k, v in HAND.items()})
    got = fn(s, **kw)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=TOL, rel=0)


def test_adaptive_weight_is_differentiated():
    """A detached weight would give d/dS(i,t_off) = I2 only; Eq. 6 adds (S(i,t) - S(i,t_on) - g1)/a on an
    active online hinge."""
    x = leaves({k: torch.tensor([v], dtype=torch.float64) for k, v in HAND.items()})
    adapoffquin(QuintupletScores(**x), **PAPER).sum().backward()
    # (0.5 - 0.45 - 0.2) / 0.3 + 1 = -0.5 + 1
    assert x["t_off"].grad.item() == pytest.approx(0.5, abs=TOL)


# --------------------------------------------------------------------------- negative weights


def one_pair(**values: float) -> QuintupletScores:
    return QuintupletScores(**{k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()})


def test_negative_weight_is_not_clamped():
    # S(i,t_off) - S(i,t_on) = 0.57 > a b = 0.45: weight 1.5 - 0.57/0.3 = -0.4.
    # Image line: -0.4 * [0.2 - 0.5 + 0.4]_+ + [0 - 0.5 + 0.97]_+ + [0 - 0.5 + 0.1]_+ = -0.04 + 0.47 + 0
    # Text line: every hinge negative (0.2 - 0.5 + 0.1, -0.3, -0.4) -> 0.  Total 0.43 (a clamped weight: 0.47).
    s = one_pair(pos=0.5, t_on=0.4, i_on=0.1, t_off=0.97, i_off=0.2, pair_a=0.1, pair_b=0.1)
    assert adapoffquin(s, **PAPER).item() == pytest.approx(0.43, abs=TOL, rel=0)
    assert adapoffquin(s, **PAPER, online=False).item() == pytest.approx(0.47, abs=TOL, rel=0)


def test_negative_weight_can_make_the_loss_negative():
    # a = 0.1, b = 1.5: weight 1.5 - (0.89 - 0.72)/0.1 = -0.2 on [0.2 - 0.9 + 0.72]_+ = 0.02: -0.004.
    # Offline hinge 0 - 0.9 + 0.89 < 0, pair_a and the text line inactive.  Total -0.004.
    s = one_pair(pos=0.9, t_on=0.72, i_on=0.3, t_off=0.89, i_off=0.3, pair_a=0.3, pair_b=0.3)
    got = adapoffquin(s, gamma1=0.2, gamma2=0.0, alpha=0.1, beta=1.5)
    assert got.item() == pytest.approx(-0.004, abs=TOL, rel=0)
    # Eq. 6 there: dL/dS(i,t_on) = 0.02/0.1 + (-0.2) = 0, dL/dS(i,t_off) = -0.02/0.1 = -0.2
    # (its offline hinge is inactive), dL/dS(i,t) = (0.17/0.1 - 1.5) * 1 = 0.2.
    x = leaves({k: getattr(s, k) for k in FIELDS})
    adapoffquin(QuintupletScores(**x), gamma1=0.2, gamma2=0.0, alpha=0.1, beta=1.5).sum().backward()
    assert x["t_on"].grad.item() == pytest.approx(0.0, abs=TOL)
    assert x["t_off"].grad.item() == pytest.approx(-0.2, abs=TOL, rel=0)
    assert x["pos"].grad.item() == pytest.approx(0.2, abs=TOL, rel=0)


# --------------------------------------------------------------------------- errors


def test_online_needs_no_offline_fields():
    raw = random_scores(0, PAPER)
    s = QuintupletScores(pos=raw["pos"], t_on=raw["t_on"], i_on=raw["i_on"])
    assert online(s, gamma1=0.2).shape == (P,)


@pytest.mark.parametrize(
    ("fn", "kw", "missing"),
    [
        (offtri, {"gamma1": 0.2, "gamma2": 0.0}, "t_off"),
        (offtri, {"gamma1": 0.2, "gamma2": 0.0, "online": False}, "i_off"),
        (offquin, {"gamma1": 0.2, "gamma2": 0.0}, "pair_a"),
        (offquin, {"gamma1": 0.2, "gamma2": 0.0, "online": False}, "pair_b"),
        (adapoffquin, PAPER, "t_off"),
        (adapoffquin, PAPER, "i_off"),
        (adapoffquin, PAPER, "pair_a"),
        (adapoffquin, {**PAPER, "reference": "positive"}, "pair_b"),
        (online, {"gamma1": 0.2}, "t_on"),
        (online, {"gamma1": 0.2}, "i_on"),
    ],
)
def test_missing_field_is_named(fn, kw, missing):
    raw = random_scores(0, PAPER)
    raw[missing] = None
    with pytest.raises(ValueError, match=rf"{fn.__name__} needs QuintupletScores\.{missing}\b"):
        fn(QuintupletScores(**raw), **kw)


@pytest.mark.parametrize("bad", ["t_on", "t_off", "pair_b"])
def test_mismatched_shapes_raise(bad):
    raw = random_scores(0, PAPER)
    raw[bad] = raw[bad][:-1]
    with pytest.raises(ValueError, match=bad):
        QuintupletScores(**raw)


def test_non_1d_fields_raise():
    raw = {k: v[:, None] for k, v in random_scores(0, PAPER).items()}
    with pytest.raises(ValueError, match=r"shape \(P,\)"):
        QuintupletScores(**raw)
    with pytest.raises(ValueError, match="tensor"):
        QuintupletScores(pos=[0.5], t_on=torch.zeros(1), i_on=torch.zeros(1))


@pytest.mark.parametrize("alpha", [0.0, -0.3])
def test_alpha_must_be_positive(alpha):
    s = QuintupletScores(**random_scores(0, PAPER))
    with pytest.raises(ValueError, match="alpha"):
        adapoffquin(s, **{**PAPER, "alpha": alpha})


def test_unknown_reference_raises():
    s = QuintupletScores(**random_scores(0, PAPER))
    with pytest.raises(ValueError, match="reference"):
        adapoffquin(s, **PAPER, reference="online")


def test_scores_are_frozen():
    s = QuintupletScores(**random_scores(0, PAPER))
    with pytest.raises(AttributeError):
        s.pos = s.t_on


def test_losses_table():
    assert LOSSES == {"online": online, "offtri": offtri, "offquin": offquin, "adapoffquin": adapoffquin}
