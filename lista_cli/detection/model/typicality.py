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

A nearest-code distance only grows with "more than normal": a smudged patch (blurred, its
grain gone) sits near the middle of the normal codes and scores *below* normal texture.
So each bank code also keeps the residual level of the normal patches it stands for,
l_j = mean log(||Q x||^2 / d + floor) (Q = I - U U^T: what the background subspace leaves
unexplained, the grain), and the residual map scores |log(||Q x||^2 / d + floor) - l|, l the
levels of the two nearest codes blended (`blend_weights`): grain lost (smudge, polish, blur)
or grain gained where the code says the patch should look otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import patches

MAX_CODE_RANK = 32
MAX_BANK_CANDIDATES = 200_000  # patches whose codes the bank's coreset is chosen from
BANK_BAND_PATCHES = 65536  # patches unfolded at once while building a bank
DISTANCE_BLOCK = 512  # patches per block: the (block, bank) matrix stays in cache (2.6x faster than 4096)
# Added to the residual variance per pixel before its log: about the variance of 8-bit
# quantisation noise ((1/255)^2 / 12), so dead-flat (clipped) patches do not score -inf.
RESIDUAL_FLOOR = 1e-6


def log_residual(centred: torch.Tensor, subspace: torch.Tensor) -> torch.Tensor:
    """(..., d) centred patches x - mu -> (...,) log(||Q x||^2 / d + floor), Q = I - U U^T."""
    residual = centred - (centred @ subspace) @ subspace.T
    return torch.log(residual.square().mean(dim=-1) + RESIDUAL_FLOOR)


class CodeBank(torch.nn.Module):
    """Normal patch codes (M, R) in the basis V (d, R), each with the radius (M,) of the
    cell of training codes it stands for and, when built with the background subspace, the
    mean log residual level (M,) of those codes' patches (empty without); once the layers
    are trained, the divisor (M,) of the sparse part of patches near each code
    (sparse_levels.py; empty: none)."""

    def __init__(
        self,
        basis: torch.Tensor,
        codes: torch.Tensor,
        radii: torch.Tensor | None = None,
        residual_levels: torch.Tensor | None = None,
        sparse_divisors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("basis", basis.clone().float())
        self.register_buffer("codes", codes.clone().float())
        self.register_buffer("radii", torch.ones(len(codes)) if radii is None else radii.clone().float())
        levels = torch.zeros(0) if residual_levels is None else residual_levels.clone().float()
        self.register_buffer("residual_levels", levels)
        divisors = torch.zeros(0) if sparse_divisors is None else sparse_divisors.clone().float()
        self.register_buffer("sparse_divisors", divisors)

    @property
    def has_residual(self) -> bool:
        """Whether the bank scores residual levels (banks from before them do not)."""
        return len(self.residual_levels) > 0

    # Training only, not saved: the index of the image each code came from (leave-one-out).
    origins: torch.Tensor | None = None

    @classmethod
    def from_codes(
        cls,
        basis: torch.Tensor,
        codes: torch.Tensor,
        size: int,
        origins: torch.Tensor | None = None,
        residuals: torch.Tensor | None = None,
    ) -> CodeBank:
        """A bank of at most `size` codes that cover the (n, R) normal codes (k-centre
        coreset). Each centre's radius is the RMS distance of the codes nearest to it,
        floored at half the median radius (a centre that covers only itself has radius 0).
        `origins` (n,): the image of each code, kept for `without`; `residuals` (n,): each
        code's log residual level, averaged over the codes each centre covers."""
        chosen = coreset(codes, size)
        centres = codes[chosen].float()
        owner, distance = _nearest(codes.float(), centres, torch.ones(len(centres)))
        sums = torch.zeros(len(centres), dtype=torch.float64).index_add_(0, owner, distance.double().square())
        counts = torch.bincount(owner, minlength=len(centres))
        radii = (sums / counts.clamp(min=1)).sqrt()
        positive = radii[radii > 0]
        floor = 0.5 * float(positive.median()) if len(positive) else 1.0
        levels = None
        if residuals is not None:  # every centre covers at least itself
            levels = torch.zeros(len(centres), dtype=torch.float64).index_add_(0, owner, residuals.double())
            levels = levels / counts.clamp(min=1)
        bank = cls(basis, centres, radii.clamp(min=floor).float(), levels)
        bank.origins = None if origins is None else origins[chosen]
        return bank

    def without(self, image: int) -> CodeBank:
        """The bank without the codes taken from training image `image` (needs `origins`):
        a training image is scored against the others as a new image would be."""
        keep = self.origins != image
        if not keep.any():
            return self
        levels = self.residual_levels[keep] if self.has_residual else None
        divisors = self.sparse_divisors[keep] if len(self.sparse_divisors) else None
        return CodeBank(self.basis, self.codes[keep], self.radii[keep], levels, divisors)

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
        return self.nearest(codes)[1]

    def nearest(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, R) codes -> (n,) index of the nearest bank code (in units of its radius) and
        (n,) that distance."""
        return _nearest(codes, self.codes, self.radii)

    def match(self, codes: torch.Tensor) -> Match:
        """(n, R) codes -> (n,) distance to the nearest bank code in units of its radius and
        what normal patches with such a code have: (n,) residual level and (n,) sparse
        divisor (each None when the bank has none), the values of the two nearest codes of
        three shortlisted, weighted by `blend_weights`. A patch between two bank codes then
        gets a value between theirs, and its score does not jump (nor differ between
        runtimes) when rounding swaps two near-equal codes."""
        candidates, exact = _shortlist(codes, self.codes, self.radii, 3)
        weights = blend_weights(exact)
        pair = torch.cat([candidates, candidates[:, :1]], dim=1)[:, :2]  # k = 1: the one code twice

        def blended(values: torch.Tensor) -> torch.Tensor | None:
            return (values[pair] * weights).sum(dim=1) if len(values) else None

        return Match(exact[:, 0], blended(self.residual_levels), blended(self.sparse_divisors))


class Match(NamedTuple):
    """What CodeBank.match finds for each of n codes."""

    distances: torch.Tensor  # (n,) to the nearest bank code, in units of its radius
    residual_levels: torch.Tensor | None  # (n,) the log residual level normal patches like it have
    sparse_divisors: torch.Tensor | None  # (n,) what their sparse part is divided by


@torch.inference_mode()
def build_bank(
    mean: torch.Tensor,
    basis: torch.Tensor,
    images: list[torch.Tensor],
    size: int,
    patch: int,
    seed: int,
    candidates: int = MAX_BANK_CANDIDATES,
    subspace: torch.Tensor | None = None,
) -> CodeBank:
    """A coreset of at most `size` codes of the normal patches x - mu of `images`, taken at
    every pixel offset; past `candidates` patches, a seeded random share of each image's.
    The bank remembers which image each code came from and, given the background
    `subspace` U (d, r), the residual level of each code's patches."""
    p = patch
    total = sum(max(0, t.shape[-2] - p + 1) * max(0, t.shape[-1] - p + 1) for t in images)
    share = min(1.0, candidates / max(total, 1))
    rng = torch.Generator().manual_seed(seed + 104729)
    codes, origins, residuals = [], [], []
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
            if subspace is not None:
                residuals.append(log_residual(rows - mean, subspace))
    levels = torch.cat(residuals) if subspace is not None else None
    return CodeBank.from_codes(basis, torch.cat(codes), size, torch.cat(origins), levels)


def _shortlist(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, size: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """For (n, R) points: the (n, k) indices of the k = min(size, M) centres with the smallest
    ||p - c_j|| / r_j, nearest first, and those (n, k) ratios.
    With w_j = 1 / r_j^2, ||p - c_j||^2 w_j = ||p||^2 w_j + ||c_j||^2 w_j - 2 p.(c_j w_j): one
    matrix product of [p, ||p||^2] with [-2 c_j w_j; w_j] per block of DISTANCE_BLOCK points
    gives every scaled squared distance. That expanded form cancels badly when p is close to
    c_j, so it only shortlists; the exact distances of the shortlisted centres order them (and
    are returned), so the order does not hang on how a matrix product rounds."""
    weights = radii.square().reciprocal()  # (M,)
    offsets = (centres.square().sum(dim=1) * weights)[None]  # (1, M)
    factors = torch.cat([-2 * centres.T * weights, weights[None]])  # (R + 1, M)
    size = min(size, len(centres))
    candidates = []
    # Traced for export, the points (a symbolic count) go as one block.
    blocks = [points] if torch.compiler.is_exporting() else points.split(DISTANCE_BLOCK)
    for block in blocks:
        lifted = torch.cat([block, block.square().sum(dim=1, keepdim=True)], dim=1)  # (b, R + 1)
        candidates.append(_smallest(torch.addmm(offsets, lifted, factors), size))
    if not candidates:
        return torch.zeros(0, size, dtype=torch.long), points.new_zeros(0, size)
    candidates = torch.cat(candidates)  # (n, k)
    exact = (points[:, None] - centres[candidates]).square().sum(dim=2).sqrt() / radii[candidates]  # (n, k)
    exact, order = exact.sort(dim=1)
    return candidates.gather(1, order), exact


SEARCH_CHUNK = 64  # columns per chunk in `_smallest`


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """(b, M) -> (b, k) column indices of each row's k smallest values (in no set order).

    torch's topk over 2048 columns took 0.8-1.5 ms per 512 rows here, a quarter of the maps'
    time. The k smallest values lie in the k chunks of SEARCH_CHUNK columns whose minima are
    smallest (each chunk holding one of them has its minimum at or below the k-th), so chunk
    minima (a fast reduction), a topk over them and one over those k chunks give the same k
    values in 0.38 ms (two runs: 2.2x and 3.9x faster)."""
    rows, columns = values.shape
    if columns % SEARCH_CHUNK or columns < 4 * SEARCH_CHUNK:
        return values.topk(k, dim=1, largest=False).indices
    chunks = values.view(rows, columns // SEARCH_CHUNK, SEARCH_CHUNK)
    best = chunks.amin(dim=2).topk(k, dim=1, largest=False).indices  # (b, k) chunks
    picked = chunks.gather(1, best[:, :, None].expand(-1, -1, SEARCH_CHUNK)).view(rows, -1)  # (b, k * chunk)
    within = picked.topk(k, dim=1, largest=False).indices
    return best.gather(1, within // SEARCH_CHUNK) * SEARCH_CHUNK + within % SEARCH_CHUNK


def _nearest(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For (n, R) points: the index of the centre minimising ||p - c_j|| / r_j, and that ratio."""
    candidates, exact = _shortlist(points, centres, radii, 2)
    return candidates[:, 0], exact[:, 0]


BLEND_EPSILON = 1e-12  # keeps the weight of a code the patch sits on finite (and dominant)


def blend_weights(exact: torch.Tensor) -> torch.Tensor:
    """(n, k) sorted distances to the shortlisted codes -> (n, 2) weights of the nearest two,
    (d_k - d_i) / d_i^2 normalised (both 1/2 when all k are equal; k = 1: the one code).
    A patch on a code takes that code's weight; at a tie of the first two both weigh the
    same, and the second weighs nothing when it ties with the third: no weight jumps when
    two codes swap places."""
    if exact.shape[1] == 1:
        return torch.cat([torch.ones_like(exact), torch.zeros_like(exact)], dim=1)
    nearest = exact[:, :2]
    # clamp, not + epsilon: the export's graph optimiser drops an Add of a constant this small
    weights = (exact[:, -1:] - nearest) / nearest.square().clamp(min=BLEND_EPSILON)
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp(min=1e-30), torch.full_like(weights, 0.5))


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
