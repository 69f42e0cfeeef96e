"""Evaluation: pixel and image metrics (ROC AUC, AUPRO, F1), scoring a labelled test set, and the
decision thresholds set from targets. Imports nothing at package import."""
