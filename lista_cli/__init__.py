"""lista: texture defect detection by deep-unfolded ISTA for robust PCA."""

__version__ = "0.5.0"
