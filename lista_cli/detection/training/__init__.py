"""Training: normal images at the working size, scales, synthetic defects and the validation set,
the train loop, map weights, sparse levels, edge and level damping, calibration. Imports nothing here."""
