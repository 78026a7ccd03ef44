"""The scores the AOQ losses combine (:class:`QuintupletScores`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass(frozen=True, eq=False)
class QuintupletScores:
    """Scores ``S(image, caption)`` of the P positive pairs ``(i, t)`` of a batch and of
    their negatives; every field is a ``(P,)`` tensor, row ``p`` for pair ``p``.

    - ``pos``: ``S(i, t)``;
    - ``t_on``: ``S(i, t_on)``, ``t_on`` the highest-scoring caption of the batch that
      does not describe ``i`` (the online hardest caption negative of anchor ``i``);
    - ``i_on``: ``S(i_on, t)``, ``i_on`` the online hardest image negative of anchor ``t``;
    - ``t_off``: ``S(i, t_off)``, ``t_off`` an offline hard negative caption of ``i``
      (drawn from ``i``'s top-h negatives over the whole training set);
    - ``i_off``: ``S(i_off, t)``, ``i_off`` an offline hard negative image of ``t``;
    - ``pair_a``: ``S(i_off, t_off)``, the first derived offline negative pair (in the
      image-anchored line of AOQ Eq. 4 and 5);
    - ``pair_b``: ``S(i~_off, t~_off)``, the second derived pair, ``i~_off`` the image
      that ``t_off`` describes and ``t~_off`` a caption of ``i_off`` (text-anchored line).

    The offline fields are ``None`` where a loss does not use them (:func:`online` needs
    only ``pos``, ``t_on`` and ``i_on``). Construction raises ``ValueError`` unless every
    given field is a 1-D tensor and all share one shape ``(P,)``.
    """

    pos: Tensor
    t_on: Tensor
    i_on: Tensor
    t_off: Tensor | None = None
    i_off: Tensor | None = None
    pair_a: Tensor | None = None
    pair_b: Tensor | None = None

    def __post_init__(self) -> None:
        shape = None
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"QuintupletScores.{f.name} must be a tensor; got {type(value).__name__}")
            if value.dim() != 1:
                raise ValueError(f"QuintupletScores.{f.name} must have shape (P,); got {tuple(value.shape)}")
            if shape is None:
                shape = value.shape
            elif value.shape != shape:
                raise ValueError(
                    f"QuintupletScores fields must share one shape (P,): {f.name} has "
                    f"{tuple(value.shape)}, pos has {tuple(shape)}"
                )

    def need(self, loss: str, *names: str) -> tuple[Tensor, ...]:
        """The fields ``names``, in that order; ``ValueError`` naming the first that is
        ``None`` and the ``loss`` that needs it."""
        values = tuple(getattr(self, name) for name in names)
        for name, value in zip(names, values):
            if value is None:
                raise ValueError(f"{loss} needs QuintupletScores.{name}, which is None")
        return values
