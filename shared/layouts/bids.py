"""Raw BIDS: ``sub-<l>/[ses-<s>/]dwi/sub-<l>[_ses-<s>][_acq-..][_run-<i>]_dwi.nii.gz`` with its
``.bval``, ``.bvec`` and ``.json``. A job's input URI is the DWI series itself; one job per
series, so a subject with two sessions or two runs is two jobs.

Entities come from pybids' own parser (``bids.layout.parse_file_entities``) on listed keys: a
full ``BIDSLayout`` index would read every file of a dataset, minutes on a public bucket. The
gradient tables follow BIDS' inheritance principle: the series' own sidecar first, then one
with fewer entities higher up (``sub-01/sub-01_dwi.bval``, ``dwi.bval`` at the root).
Raw BIDS has no brain mask (the consumer computes one) and no segmentation.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from shared.errors import InvalidInput, MissingInput
from shared.layouts.base import Found, Layout, SubjectFiles
from shared.store import ObjectStore

DWI_SUFFIXES = ("_dwi.nii.gz", "_dwi.nii")
#: The entities that tell one subject's series apart, in BIDS' order, with their short names:
#: a series' id has each it carries, so two series never share an id.
ID_ENTITIES = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "direction": "dir",
    "run": "run",
}


@cache
def _parser() -> Any:
    from bids.layout import parse_file_entities  # type: ignore[import-untyped]  # pybids: imported once, where it is needed

    return parse_file_entities


def entities(key: str) -> dict[str, str]:
    """The BIDS entities of ``key`` as strings (pybids' parser, its bids + derivatives rules)."""
    parsed = _parser()("/" + key.lstrip("/"), config=["bids", "derivatives"])
    return {k: str(v) for k, v in parsed.items()}


def series_id(found: dict[str, str]) -> str:
    """``sub-01[_ses-1][_acq-..][_dir-..][_run-2]``: one series' subject id for its jobs."""
    return "_".join(f"{short}-{found[k]}" for k, short in ID_ENTITIES.items() if k in found)


def stem_of(key: str) -> str:
    """The key without its ``_dwi.nii[.gz]`` suffix."""
    for suffix in DWI_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    raise InvalidInput(f"{key} is not a BIDS diffusion series (*_dwi.nii.gz)")


def inherited(
    store: ObjectStore, key: str, extension: str, listed: frozenset[str] | None = None
) -> str | None:
    """The sidecar of series ``key`` with ``extension`` (".bval"...), by BIDS inheritance: its
    own, then one per level up whose name keeps only that level's entities. With ``listed``
    (every key of the dataset, from one listing) no object is asked for: a campaign over
    thousands of series on S3 would otherwise wait for a HEAD per candidate."""
    exists = listed.__contains__ if listed is not None else store.exists
    stem = stem_of(key)
    own = f"{stem}_dwi{extension}"
    if exists(own):
        return own
    found = entities(key)
    sub, ses = found.get("subject"), found.get("session")
    candidates = []
    if sub and ses:
        candidates.append(f"sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_dwi{extension}")
    if sub:
        candidates.append(f"sub-{sub}/sub-{sub}_dwi{extension}")
    candidates.append(f"dwi{extension}")
    return next((c for c in candidates if exists(c)), None)


def dataset_type(store: ObjectStore) -> dict[str, Any]:
    """The dataset's ``dataset_description.json`` ({} if it has none or it is not JSON)."""
    try:
        value = json.loads(store.get_bytes("dataset_description.json"))
    except (MissingInput, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def generated_by(description: dict[str, Any]) -> list[str]:
    names = [g.get("Name", "") for g in description.get("GeneratedBy", []) if isinstance(g, dict)]
    return [str(n).lower() for n in names]


class BidsLayout(Layout):
    name = "bids"
    #: Which DWI keys are this layout's series (QSIPrep's are ``desc-preproc`` derivatives).
    derivative = False

    def detect(self, store: ObjectStore) -> bool:
        description = dataset_type(store)
        if not description:
            return False
        return (description.get("DatasetType", "raw") == "derivative") == self.derivative and (
            not self.derivative or "qsiprep" in generated_by(description)
        )

    def is_series(self, key: str) -> bool:
        if not key.endswith(DWI_SUFFIXES) or "/dwi/" not in f"/{key}":
            return False
        return ("desc-preproc_" in key.rsplit("/", 1)[-1]) == self.derivative

    def discover(self, store: ObjectStore, root_uri: str) -> list[Found]:
        keys = sorted(store.list())
        listed = frozenset(keys)
        subjects = sorted({k.split("/", 1)[0] for k in keys if k.startswith("sub-")})
        series = [k for k in keys if k.startswith("sub-") and self.is_series(k)]
        root = root_uri.rstrip("/")
        rows: list[Found] = []
        for subject in subjects:
            mine = [k for k in series if k.startswith(f"{subject}/")]
            if not mine:
                rows.append(Found(f"{root}/{subject}", subject, f"{subject}: no diffusion data"))
            for key in mine:
                rows.append(self._found(store, root, key, listed))
        return rows

    def _found(self, store: ObjectStore, root: str, key: str, listed: frozenset[str]) -> Found:
        name = series_id(entities(key))
        missing = [ext for ext in (".bval", ".bvec") if inherited(store, key, ext, listed) is None]
        problem = f"{name}: no {' or '.join(missing)} for {key}" if missing else ""
        return Found(f"{root}/{key}", name, problem)

    def files(self, store: ObjectStore, key: str) -> SubjectFiles:
        found = entities(key)
        tables = {}
        for ext in (".bval", ".bvec"):
            table = inherited(store, key, ext)
            if table is None:
                raise MissingInput(f"missing input: no {ext} for {store.uri_for(key)}")
            tables[ext] = table
        sidecar = inherited(store, key, ".json")
        return SubjectFiles(
            layout=self.name,
            dwi=key,
            bval=tables[".bval"],
            bvec=tables[".bvec"],
            sidecar=sidecar,
            entities=found,
            **self._extra(store, key, found),
        )

    def _extra(self, store: ObjectStore, key: str, found: dict[str, str]) -> dict[str, Any]:
        return {}  # raw BIDS: no mask, no segmentation
