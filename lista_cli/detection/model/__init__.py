"""The model: overlapping patches, the unfolded robust-PCA network (background U, sparse part S)
and the bank of normal codes that says whether a patch is typical. Imports nothing at package import."""
