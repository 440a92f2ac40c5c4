"""Compiler from the float SDDPM model to Loihi 2 fixed point: quantization, NIR, ONNX, energy."""
