"""The optimizer side: hooks around an optimizer's update (``step_hooks``), the step each optimizer applied
to each entry (``step_sizes``), decoupled decay and the proximal step (``step_updates``), weight-decay
groups (``param_groups``) and the group engine (``group_prox``). Internal: no stability promise; the
public API is ``lightning_reg``'s namespace.
"""
