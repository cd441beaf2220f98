"""Exporters (ONNX, TensorRT) and the runners that execute what they produce behind one interface."""
