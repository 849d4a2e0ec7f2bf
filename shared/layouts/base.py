"""What every input layout is: where one diffusion series and its companions live, and how to
find every series of a dataset.

A layout answers two questions, from object keys alone (no image is read here):

* ``discover(store, root_uri)``: every series below a dataset root, one ``Found`` each (the
  input URI a job is enqueued for, its subject id, or the one-line reason it cannot run);
* ``files(store, key)``: for one series, the keys of its DWI, gradient tables, brain mask and
  segmentation, below the dataset root ``store``.

The producer uses the first to enqueue a campaign, the consumer the second to load a job; both
import only this package (and pybids' entity parser, for the BIDS layouts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from shared.store import ObjectStore

#: What a segmentation's labels are: FreeSurfer's aparc+aseg or aseg ids, or tissue classes
#: (1 CSF, 2 grey matter, 3 white matter: QSIPrep's plain ``_dseg``).
SegmentationKind = Literal["freesurfer", "tissue"]


@dataclass(frozen=True)
class SubjectFiles:
    """One diffusion series' objects, as keys below the dataset root."""

    layout: str
    dwi: str
    bval: str
    bvec: str
    mask: str | None = None  # None: the layout has no brain mask; the consumer computes one
    segmentation: str | None = None  # None: no segmentation; white matter comes from FA
    segmentation_kind: SegmentationKind = "freesurfer"
    sidecar: str | None = None  # the series' JSON metadata, where the layout has one
    entities: dict[str, str] = field(default_factory=dict)  # BIDS entities of the series


@dataclass(frozen=True)
class Found:
    """One series a campaign would run on, or why it cannot."""

    input_uri: str
    subject: str
    problem: str = ""


class Layout(ABC):
    name: str

    @abstractmethod
    def detect(self, store: ObjectStore) -> bool:
        """Whether the dataset rooted at ``store`` is in this layout (a cheap look)."""

    @abstractmethod
    def discover(self, store: ObjectStore, root_uri: str) -> list[Found]:
        """Every series below the dataset root, in a stable order."""

    @abstractmethod
    def files(self, store: ObjectStore, key: str) -> SubjectFiles:
        """The objects of the series at ``key`` (``MissingInput`` for a required one absent)."""
