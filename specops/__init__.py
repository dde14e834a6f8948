"""SpecOps: speculative decoding on ONNX Runtime, served over HTTP."""

__version__ = "0.1.0"
