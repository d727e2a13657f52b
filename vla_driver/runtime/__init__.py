"""Layer 3: running a checkpoint (torch, ONNX Runtime, TensorRT), exporting and verifying its graphs."""
