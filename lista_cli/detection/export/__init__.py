"""Export: the ONNX graph written from the detector's forward pass, and the ONNX Runtime detector
that runs it with numpy only (no torch). Imports nothing at package import."""
