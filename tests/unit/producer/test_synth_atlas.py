"""The synthetic brain's bundle atlas runs through the tracts its diffusion signal is made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dipy.io.streamline import load_tractogram
from dipy.tracking.streamline import length

from producer.synth.anatomy import Anatomy
from producer.synth.atlas import BUNDLES, model_bundles, write_tract_atlas
from shared.store import LocalStore

TRACT = {"CC": "cc", "CST_L": "cst", "CST_R": "cst", "SLF_L": "slf", "SLF_R": "slf"}


def test_model_bundles_lie_in_their_tracts_and_pass_the_length_cut() -> None:
    brain = Anatomy.from_seed(0)
    bundles = model_bundles(0)
    assert tuple(sorted(bundles)) == BUNDLES
    for name, streamlines in bundles.items():
        points = streamlines.get_data().astype(np.float64)
        u, v, w = brain._relative(points[:, 0], points[:, 1], points[:, 2])
        inside = getattr(brain._distances(u, v, w), TRACT[name]) > 0
        assert inside.mean() > 0.9, (name, inside.mean())
        if name.endswith("_L"):
            assert (u < 0).all()
        if name.endswith("_R"):
            assert (u > 0).all()
        # RecoBundles keeps streamlines longer than 50 mm by default.
        assert length(streamlines).min() > 50, name
    # Reproducible: the same seed, the same atlas.
    again = model_bundles(0)
    assert all(np.array_equal(bundles[n].get_data(), again[n].get_data()) for n in BUNDLES)


def test_the_atlas_opens_in_dipy(tmp_path: Path) -> None:
    write_tract_atlas(LocalStore(tmp_path))
    for name in BUNDLES:
        sft = load_tractogram(str(tmp_path / f"{name}.trk"), "same", bbox_valid_check=True)
        assert len(sft.streamlines) == 60
