"""Model folders, tokenizers and the ONNX Runtime decoder (the only onnxruntime user)."""
