"""Scoring: the trained detector, its traced forward pass, the pixel maps made from S, the numpy
steps before and after (resize, tiling, damping, regions) and the checkpoint file. Imports nothing here."""
