"""The regularization terms, one class per mode: how each term reaches the weights.

- ``l1_mode="loss"``: :mod:`~lightning_reg.terms.l1_loss` (the L1 term and the group term in the loss);
- ``l1_mode="proximal"``: :mod:`~lightning_reg.terms.proximal` (both, as one proximal step);
- ``l2_mode="weight_decay"``: :mod:`~lightning_reg.terms.l2_weight_decay`;
- ``l2_mode="loss"``: :mod:`~lightning_reg.terms.l2_loss`;
- ``l2_mode="decoupled"``: :mod:`~lightning_reg.terms.l2_decoupled`.

The contract and the registry are in :mod:`~lightning_reg.terms.base`; :mod:`~lightning_reg.terms.penalty`
sums the terms in the loss. Importing this package registers the modes above. Internal: no stability
promise; the public API is ``lightning_reg``'s namespace.
"""

from lightning_reg.terms import l1_loss, l2_decoupled, l2_loss, l2_weight_decay, proximal
from lightning_reg.terms.base import Context, Term, terms_for
from lightning_reg.terms.penalty import WeightPenalty

__all__ = [
    "Context",
    "Term",
    "WeightPenalty",
    "l1_loss",
    "l2_decoupled",
    "l2_loss",
    "l2_weight_decay",
    "proximal",
    "terms_for",
]
