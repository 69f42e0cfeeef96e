"""Finding defects, a sub-package a stage: model/ (patches, unfolded model, code bank), training/,
scoring/ (detector, maps), export/ (ONNX), evaluation/. Nothing here imports torch at package import."""
