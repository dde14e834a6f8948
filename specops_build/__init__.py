"""Build-time tooling for the embedded default model pair.

Imports torch and transformers; the `specops` runtime package never imports this.
"""
