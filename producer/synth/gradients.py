"""HCP-like multi-shell gradient schemes: well-spread directions per shell, shells interleaved,
b0 volumes spread through the series as HCP acquires them."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@functools.lru_cache(maxsize=16)
def _shell_directions(n: int, shell: int) -> F64:
    """``n`` antipodally well-spread unit vectors; each shell gets its own fixed rotation so the
    shells interleave, and half the vectors are flipped as HCP's full-sphere schemes are."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    i = np.arange(n)
    z = 1.0 - (i + 0.5) / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    start = HemiSphere(xyz=np.stack([r * np.cos(phi), r * np.sin(phi), z], 1))
    spread, _ = disperse_charges(start, 200, const=0.05)
    rng = np.random.default_rng([0x5EED, shell])  # the scheme is the same for every subject
    q, rr = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(rr))
    flips = rng.choice([-1.0, 1.0], size=(n, 1))
    vecs = (spread.vertices @ q.T) * flips
    vecs = np.round(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), 6)
    return np.asarray(vecs, dtype=np.float64)


def gradient_scheme(shells: tuple[int, ...], dirs_per_shell: int, n_b0: int) -> tuple[F64, F64]:
    """(bvals (N,), bvecs (3, N)): shells interleaved, a b0 opening each block as HCP does."""
    per_shell = [_shell_directions(dirs_per_shell, s) for s in range(len(shells))]
    dw = [(float(b), per_shell[s][i]) for i in range(dirs_per_shell) for s, b in enumerate(shells)]
    bvals: list[float] = []
    bvecs: list[F64] = []
    for block in np.array_split(np.arange(len(dw)), n_b0):
        bvals.append(0.0)
        bvecs.append(np.zeros(3))
        for k in block:
            bvals.append(dw[k][0])
            bvecs.append(dw[k][1])
    return np.asarray(bvals, dtype=np.float64), np.asarray(bvecs, dtype=np.float64).T
