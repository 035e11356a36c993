"""The tensor maths, with no optimizer and no Lightning: norms and shrinkage (``penalties``), the per-step
tensor work as loops or multi-tensor calls (``kernels``), the L1 term whose gradient is added after
backward (``deferred``), its compiled kernels (``fused``, ``fused_group``) and sums over ``DTensor``
shards (``sharding``). Internal: no stability promise; the public API is ``lightning_reg``'s namespace.
"""
