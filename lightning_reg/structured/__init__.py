"""Structured sparsity: coupled channel groups (``couplings``), their tracing with Torch-Pruning
(``channels``) and its slice rules (``layer_rules``, public:
:func:`~lightning_reg.structured.layer_rules.register_layer`),
the removal of dead units (``pruning``, ``shrink``) and BatchNorm recalibration (``batchnorm``).
"""
