"""Is the patch itself typical? Distance of each patch's code to the nearest normal code.

The sparse part S finds what the background model cannot explain. Some defects fit the
background model too well: a stain is a brightness change (the mean direction is in U), a
smudge is a patch blurred towards the mean patch. Both are *in* the subspace, but at
coefficients that normal texture never takes. So each patch x gets a code c = V^T (x - mu)
in a basis V of the leading principal directions of normal patches, and its score is the
distance to the nearest code in a bank of codes of normal training patches (a
1-nearest-neighbour typicality test in R^R, R <= 32). The code does not depend on the
unfolded layers, so training (which changes S) never changes this map.

The bank is a greedy k-centre coreset (as in PatchCore) of the codes of the training
patches at every pixel offset: it covers rare normal structures (a brick's horizontal
mortar joint) that a random sample of the same size misses, so they are not flagged.
"""

from __future__ import annotations

import torch

MAX_CODE_RANK = 32
DISTANCE_BLOCK = 512  # patches per block: the (block, bank) matrix stays in cache (2.6x faster than 4096)


class CodeBank(torch.nn.Module):
    """Normal patch codes (M, R) in the basis V (d, R)."""

    def __init__(self, basis: torch.Tensor, codes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("basis", basis.clone().float())
        self.register_buffer("codes", codes.clone().float())

    @classmethod
    def from_codes(cls, basis: torch.Tensor, codes: torch.Tensor, size: int) -> CodeBank:
        """A bank of at most `size` codes that cover the (n, R) normal codes (k-centre coreset)."""
        return cls(basis, codes[coreset(codes, size)])

    def distances(self, centred: torch.Tensor) -> torch.Tensor:
        """(B, N, d) centred patches x - mu -> (B, N) distance of each code to its nearest normal code."""
        codes = centred @ self.basis  # (B, N, R)
        flat = codes.reshape(-1, codes.shape[-1])
        # argmin_j ||c - b_j||^2 = argmin_j (||b_j||^2 - 2 c.b_j): one matrix product per block
        # and no square root over the (block, bank) matrix; then the exact distance to the
        # chosen code (the expanded form cancels badly when c is close to b_j).
        norms = self.codes.square().sum(dim=1)[None]  # (1, M)
        nearest = [
            torch.addmm(norms, flat[i : i + DISTANCE_BLOCK], self.codes.T, alpha=-2).argmin(dim=1)
            for i in range(0, len(flat), DISTANCE_BLOCK)
        ]
        chosen = self.codes[torch.cat(nearest)]  # (B*N, R)
        return (flat - chosen).square().sum(dim=1).sqrt().view(codes.shape[:2])


def coreset(points: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of at most `size` of the (n, R) points chosen greedily so that the largest
    distance from any point to its nearest chosen one stays small (farthest-point k-centre,
    a 2-approximation). Starts from the point nearest the mean; deterministic."""
    if len(points) <= size:
        return torch.arange(len(points))
    points = (points - points.mean(dim=0)).float()  # centred: the expanded form below cancels less
    norms = points.square().sum(dim=1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = norms.argmin()
    nearest = torch.full_like(norms, float("inf"))  # squared distance to the chosen set
    for k in range(size):
        if k:
            chosen[k] = nearest.argmax()
        centre = chosen[k]
        # ||p - c||^2 = ||p||^2 + ||c||^2 - 2 p.c: one matrix-vector product per step
        torch.minimum(nearest, torch.addmv(norms + norms[centre], points, points[centre], alpha=-2), out=nearest)
    return chosen
