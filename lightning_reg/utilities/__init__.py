"""Helpers the rest of the package shares, with no knowledge of regularization: argument checks
(``checks``), optional imports (``optional``), what stays eager under ``torch.compile`` (``eager``) and
walking nested outputs (``nested``). Internal, except the error types the checks raise.
"""
