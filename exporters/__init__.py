"""What a trained model becomes: ONNX (onnx.py), FP16 / INT8 Q/DQ (precision.py), manifests
(manifest.py), TensorRT engines (tensorrt.py), and the chain that ties them (pipeline.py)."""
