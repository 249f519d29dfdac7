"""Rendering and reports: read everyone's results; imported by no one but the CLI."""
