"""QSIPrep derivatives: ``sub-<l>/[ses-<s>/]dwi/<stem>_space-<T1w|ACPC>_desc-preproc_dwi.nii.gz``
with its ``.bval``/``.bvec``/``.json`` and ``..._desc-brain_mask.nii.gz`` on the same grid; the
subject's segmentation in ``anat/``: FreeSurfer's labels as ``*_desc-aseg_dseg.nii.gz`` where
QSIPrep ran with FreeSurfer, else its tissue classes ``*_dseg.nii.gz`` (1 CSF, 2 grey, 3 white).
QSIPrep up to 0.23 wrote ``space-T1w`` (anatomical files without a space); 0.24 and 1.x write
``space-ACPC`` on both. A dataset whose ``dataset_description.json`` names QSIPrep in
``GeneratedBy`` is this layout.
"""

from __future__ import annotations

from typing import Any

from shared.layouts.base import SegmentationKind
from shared.layouts.bids import BidsLayout
from shared.store import ObjectStore


def _anat_candidates(subject: str, space: str | None) -> list[tuple[str, SegmentationKind]]:
    """Where the subject's segmentation may be, best first (FreeSurfer labels before tissue
    classes; the series' space before none)."""
    spaces = [f"_space-{space}", ""] if space else [""]
    found: list[tuple[str, SegmentationKind]] = []
    kinds: tuple[tuple[str, SegmentationKind], ...] = (("_desc-aseg", "freesurfer"), ("", "tissue"))
    for desc, kind in kinds:
        for sp in spaces:
            found.append((f"sub-{subject}/anat/sub-{subject}{sp}{desc}_dseg.nii.gz", kind))
    return found


class QsiprepLayout(BidsLayout):
    name = "qsiprep"
    derivative = True

    def _extra(self, store: ObjectStore, key: str, found: dict[str, str]) -> dict[str, Any]:
        mask = key.replace("_desc-preproc_dwi.nii.gz", "_desc-brain_mask.nii.gz")
        subject = found.get("subject", "")
        segmentation = next(
            (
                (k, kind)
                for k, kind in _anat_candidates(subject, found.get("space"))
                if store.exists(k)
            ),
            None,
        )
        return {
            "mask": mask if store.exists(mask) else None,
            "segmentation": segmentation[0] if segmentation else None,
            "segmentation_kind": segmentation[1] if segmentation else "freesurfer",
        }
