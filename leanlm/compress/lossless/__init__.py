"""Bit-exact lossless compression of model weights: field-split rANS codec, container, delta mode.

Public verbs live in ``api`` (imported lazily by the CLI and the model registry).
"""
