"""lista: texture defect detection by deep-unfolded ISTA for robust PCA."""

__version__ = "0.4.0"
