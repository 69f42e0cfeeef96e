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

from . import patches

MAX_CODE_RANK = 32
MAX_BANK_CANDIDATES = 200_000  # patches whose codes the bank's coreset is chosen from
BANK_BAND_PATCHES = 65536  # patches unfolded at once while building a bank
DISTANCE_BLOCK = 512  # patches per block: the (block, bank) matrix stays in cache (2.6x faster than 4096)


class CodeBank(torch.nn.Module):
    """Normal patch codes (M, R) in the basis V (d, R), each with the radius (M,) of the
    cell of training codes it stands for."""

    def __init__(self, basis: torch.Tensor, codes: torch.Tensor, radii: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("basis", basis.clone().float())
        self.register_buffer("codes", codes.clone().float())
        self.register_buffer("radii", torch.ones(len(codes)) if radii is None else radii.clone().float())

    # Training only, not saved: the index of the image each code came from (leave-one-out).
    origins: torch.Tensor | None = None

    @classmethod
    def from_codes(
        cls, basis: torch.Tensor, codes: torch.Tensor, size: int, origins: torch.Tensor | None = None
    ) -> CodeBank:
        """A bank of at most `size` codes that cover the (n, R) normal codes (k-centre
        coreset). Each centre's radius is the RMS distance of the codes nearest to it,
        floored at half the median radius (a centre that covers only itself has radius 0).
        `origins` (n,): the image of each code, kept for `without`."""
        chosen = coreset(codes, size)
        centres = codes[chosen].float()
        owner, distance = _nearest(codes.float(), centres, torch.ones(len(centres)))
        sums = torch.zeros(len(centres), dtype=torch.float64).index_add_(0, owner, distance.double().square())
        counts = torch.bincount(owner, minlength=len(centres))
        radii = (sums / counts.clamp(min=1)).sqrt()
        positive = radii[radii > 0]
        floor = 0.5 * float(positive.median()) if len(positive) else 1.0
        bank = cls(basis, centres, radii.clamp(min=floor).float())
        bank.origins = None if origins is None else origins[chosen]
        return bank

    def without(self, image: int) -> CodeBank:
        """The bank without the codes taken from training image `image` (needs `origins`):
        a training image is scored against the others as a new image would be."""
        keep = self.origins != image
        if not keep.any():
            return self
        return CodeBank(self.basis, self.codes[keep], self.radii[keep])

    def distances(self, centred: torch.Tensor) -> torch.Tensor:
        """(B, N, d) centred patches x - mu -> (B, N) distance of each code to the nearest
        normal code, in units of that code's cell radius: min_j ||c - b_j|| / r_j. Where
        normal texture varies a lot (mortar edges), cells are wide and a code must be
        further out to score; where it barely varies (flat brick), a small step is enough."""
        codes = centred @ self.basis  # (B, N, R)
        return self.code_distances(codes.reshape(-1, codes.shape[-1])).view(codes.shape[:2])

    def codes_of(self, centred: torch.Tensor) -> torch.Tensor:
        """(..., d) centred patches -> (..., R) codes in the bank's basis."""
        return centred @ self.basis

    def code_distances(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, R) codes -> (n,) distance to the nearest bank code in units of its cell radius."""
        return _nearest(codes, self.codes, self.radii)[1]


@torch.inference_mode()
def build_bank(
    mean: torch.Tensor,
    basis: torch.Tensor,
    images: list[torch.Tensor],
    size: int,
    patch: int,
    seed: int,
    candidates: int = MAX_BANK_CANDIDATES,
) -> CodeBank:
    """A coreset of at most `size` codes of the normal patches x - mu of `images`, taken at
    every pixel offset; past `candidates` patches, a seeded random share of each image's.
    The bank remembers which image each code came from."""
    p = patch
    total = sum(max(0, t.shape[-2] - p + 1) * max(0, t.shape[-1] - p + 1) for t in images)
    share = min(1.0, candidates / max(total, 1))
    rng = torch.Generator().manual_seed(seed + 104729)
    codes, origins = [], []
    for number, image in enumerate(images):
        height, width = image.shape[-2:]
        if min(height, width) < p:
            continue
        band = max(1, BANK_BAND_PATCHES // (width - p + 1))  # patch rows per band: bounded memory
        for top in range(0, height - p + 1, band):
            rows = patches.unfold(image[None, :, top : top + band + p - 1], p, 1)[0]
            if share < 1.0:
                rows = rows[torch.randperm(len(rows), generator=rng)[: max(1, round(share * len(rows)))]]
            codes.append((rows - mean) @ basis)
            origins.append(torch.full((len(rows),), number, dtype=torch.long))
    return CodeBank.from_codes(basis, torch.cat(codes), size, torch.cat(origins))


def _nearest(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For (n, R) points: the index of the centre minimising ||p - c_j|| / r_j, and that ratio.

    With w_j = 1 / r_j^2, ||p - c_j||^2 w_j = ||p||^2 w_j + ||c_j||^2 w_j - 2 p.(c_j w_j): one
    matrix product of [p, ||p||^2] with [-2 c_j w_j; w_j] per block of DISTANCE_BLOCK points
    gives every scaled squared distance. Then the exact distance to the chosen centre (the
    expanded form cancels badly when p is close to c_j)."""
    weights = radii.square().reciprocal()  # (M,)
    offsets = (centres.square().sum(dim=1) * weights)[None]  # (1, M)
    factors = torch.cat([-2 * centres.T * weights, weights[None]])  # (R + 1, M)
    chosen = []
    for i in range(0, len(points), DISTANCE_BLOCK):
        block = points[i : i + DISTANCE_BLOCK]
        lifted = torch.cat([block, block.square().sum(dim=1, keepdim=True)], dim=1)  # (b, R + 1)
        chosen.append(torch.addmm(offsets, lifted, factors).argmin(dim=1))
    index = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    exact = (points - centres[index]).square().sum(dim=1).sqrt() / radii[index]
    return index, exact


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
