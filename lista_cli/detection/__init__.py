"""Finding defects: patches, the unfolded model, typicality, the detector, its training,
calibration, evaluation and export. Nothing here imports torch at package import."""
