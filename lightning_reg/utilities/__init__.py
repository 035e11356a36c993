"""Helpers the rest of the package shares, with no knowledge of regularization."""
