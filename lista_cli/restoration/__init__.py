"""Deblurring: the blur operator, Tikhonov solvers, the regularisation-parameter rules, quality."""
