"""BIDS-Derivatives names and metadata for the outputs of a BIDS campaign (naming only, no I/O).

A job over a raw-BIDS or QSIPrep series keeps its results where every job does
(``<subject>/<pipeline>/<key16>/``); ``consumers.derivatives`` then copies each known map to
the name below, beside a JSON sidecar, so the results root is also a BIDS-Derivatives dataset.
Names keep the series' identifying entities and QSIPrep's ``space`` and drop its
``desc-preproc``: ``sub-01/ses-1/dwi/sub-01_ses-1_run-2_FA.nii.gz``.

BIDS 1.11 (what the pinned validator checks) has no ``model``/``param`` entities and no
``dwimap`` suffix (BEP016) and no tractogram files (BEP046), so a name BIDS rejects is replaced
by the closest one it accepts: FA is the ``FA`` suffix, MD the ``ADC`` suffix (the tensor's mean
diffusivity is the direction-averaged ADC). Tractograms keep BEP046's draft name and are listed
in ``.bidsignore``, as BIDS asks for files it does not cover yet. docs/derivatives.md has the
table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from shared.layouts import resolve
from shared.layouts.bids import entities
from shared.manifest import Manifest
from shared.params import PIPELINE_PARAMS

#: The BIDS version whose schema the pinned validator (bids-validator-deno 3.0.2) checks.
BIDS_VERSION = "1.11.1"
#: The pipelines whose outputs are BIDS maps; the others (bundles, microstructure) export nothing.
DIFFUSION_PIPELINES = frozenset({"dti", "tractography"})
#: The source entities a name keeps, in BIDS' entity order, with their short names: those of
#: the series' id (``series_id``), ``rec`` (two reconstructions of one run would otherwise share
#: every name) and ``space``. Anything else, QSIPrep's ``desc-preproc`` first, is dropped.
KEPT_ENTITIES = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "space": "space",
}
#: The ``DatasetLinks`` name of the source dataset in ``bids:<name>:<path>`` URIs, per layout.
LINKS = {"bids": "raw", "qsiprep": "qsiprep"}
#: BEP046's ``track-<method>`` label for each of dipy's trackers.
TRACK_LABELS = {"deterministic": "det", "probabilistic": "prob"}
#: Where the producer keeps campaign plans at the results root (``producer.campaign.PLANS``).
CAMPAIGN_RECORDS = "_campaigns"
#: Files BIDS has no rule for yet (BEP046 tractograms): the validator is told to skip them.
UNCOVERED = ("*_tractogram.trx", "*_tractogram.trk", "*_tractogram.json")
#: The pipelines' file names that have a BIDS name: (extra entities, suffix).
MAPS: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "fa.nii.gz": ((), "FA"),
    "md.nii.gz": ((), "ADC"),
    "wm_mask.nii.gz": ((("label", "WM"),), "mask"),
    "brain_mask.nii.gz": ((("desc", "brain"),), "mask"),
}
TRACTOGRAMS = ("tractogram.trx", "tractogram.trk")  # the merged tractogram; never the shards
TRACTOGRAM_EXTENSIONS = ("_tractogram.trx", "_tractogram.trk")  # one per job: they share a sidecar
README = """\
voxfleet results, also a BIDS-Derivatives dataset (dataset_description.json).

Each job's own files stay below <subject>/<pipeline>/<key>/ (its manifest.json lists them);
its maps are copied to BIDS names beside a JSON sidecar that names the job (Voxfleet.JobKey).
.bidsignore lists voxfleet's own folders and the files BIDS does not cover yet.
"""


@dataclass(frozen=True)
class Series:
    """A job's input as a BIDS series: its layout, its dataset's root and its key there."""

    layout: str
    root_uri: str
    key: str
    entities: dict[str, str]

    @classmethod
    def of(cls, input_uri: str) -> Series | None:
        """The series a job read, or None when its input is not BIDS (an HCP subject)."""
        layout, root, key = resolve(input_uri)
        if layout.name not in LINKS:
            return None
        return cls(layout.name, root, key, entities(key))

    @property
    def link(self) -> str:
        return LINKS[self.layout]

    @property
    def link_uri(self) -> str:
        """The dataset root as a URI (``DatasetLinks`` values must be URIs, not paths)."""
        if "://" in self.root_uri:
            return self.root_uri
        return Path(self.root_uri).resolve().as_uri()

    def bids_uri(self, key: str | None = None) -> str:
        """``bids:<link>:<key>``: a file of the source dataset (the series itself by default)."""
        return f"bids:{self.link}:{key or self.key}"

    def name(self, extra: tuple[tuple[str, str], ...], suffix: str, extension: str) -> str:
        """The key below the results root of one derivative of this series."""
        kept = [
            (short, self.entities[k]) for k, short in KEPT_ENTITIES.items() if k in self.entities
        ]
        stem = "_".join(f"{k}-{v}" for k, v in [*kept, *extra])
        folder = f"sub-{self.entities['subject']}"
        if "session" in self.entities:
            folder += f"/ses-{self.entities['session']}"
        return f"{folder}/dwi/{stem}_{suffix}{extension}"


@dataclass(frozen=True)
class Output:
    """One file of a committed job and the BIDS name it is exported under."""

    source: str  # its key below the job's prefix, as the manifest lists it: "<attempt>/fa.nii.gz"
    key: str  # its BIDS name below the results root
    bytes: int
    sidecar: dict[str, Any]

    @property
    def sidecar_key(self) -> str:
        stem = self.key.rsplit("/", 1)[-1].split(".", 1)[0]
        return f"{self.key.rsplit('/', 1)[0]}/{stem}.json"


def result_prefix(manifest: Manifest) -> str:
    """The job's folder below the results root (``JobSpec.result_prefix``)."""
    return f"{manifest.subject}/{manifest.pipeline}/{manifest.job_key[:16]}"


def effective_params(manifest: Manifest) -> dict[str, Any]:
    """The job's parameters with the defaults it ran with; as submitted when the pipeline's
    version has changed since (today's defaults would not be the ones it used)."""
    model = PIPELINE_PARAMS.get(manifest.pipeline)
    if model is None or model.version != manifest.pipeline_version:
        return dict(manifest.params)
    return model.model_validate(manifest.params).model_dump(mode="json")


def outputs(series: Series, manifest: Manifest, manifest_uri: str) -> list[Output]:
    """The BIDS name and sidecar of every exportable file the manifest lists."""
    if manifest.pipeline not in DIFFUSION_PIPELINES:
        return []
    params = effective_params(manifest)
    below = f"{manifest.attempt}/"
    listed = {f["key"][len(below) :]: f for f in manifest.files if str(f["key"]).startswith(below)}
    found: list[Output] = []
    for name, entry in listed.items():
        if name in MAPS:
            extra, suffix = MAPS[name]
            key = series.name(extra, suffix, ".nii.gz")
        elif name in TRACTOGRAMS and not any(o.key.endswith(TRACTOGRAM_EXTENSIONS) for o in found):
            track = TRACK_LABELS.get(str(params.get("tracker", "")), "det")
            extra = (("tract", "wholebrain"), ("track", track))
            key = series.name(extra, "tractogram", Path(name).suffix)
        else:
            continue  # shards, QC images, timing: voxfleet's own files
        sidecar = {
            **_described(name, manifest, params),
            "Sources": _sources(name, series, manifest),
            "SpatialReference": series.bids_uri(),  # every map is on the source's grid
            "Voxfleet": {
                "JobKey": manifest.job_key,
                "Manifest": manifest_uri,
                "File": entry["key"],
                "Sha256": entry.get("sha256"),
                "Pipeline": manifest.pipeline,
                "PipelineVersion": manifest.pipeline_version,
                "Parameters": params,
            },
        }
        found.append(Output(entry["key"], key, int(entry.get("bytes", -1)), sidecar))
    return sorted(found, key=lambda o: o.key)


def _sources(name: str, series: Series, manifest: Manifest) -> list[str]:
    sources = [series.bids_uri()]
    # The summary names the segmentation (a key below the dataset root) white matter came from.
    segmentation = manifest.summary.get("segmentation")
    if name == "wm_mask.nii.gz" and isinstance(segmentation, str) and segmentation:
        sources.append(series.bids_uri(segmentation))
    return sources


def _described(name: str, manifest: Manifest, params: dict[str, Any]) -> dict[str, Any]:
    """The fields that say what one file is (BIDS' Description, SkullStripped, Type, Units)."""
    by = f"voxfleet's {manifest.pipeline} pipeline (dipy)"
    if name == "fa.nii.gz":
        text = f"Fractional anisotropy of the diffusion tensor, by {by}; 0 outside the brain mask."
        return {"Description": text, "SkullStripped": True}
    if name == "md.nii.gz":
        text = (
            f"Mean diffusivity (trace / 3) of the diffusion tensor, by {by}; 0 outside the brain "
            "mask. Named ADC: BIDS 1.11 has no MD map (BEP016 would name it "
            "model-tensor_param-md_dwimap)."
        )
        return {"Description": text, "SkullStripped": True, "Units": "mm^2/s"}
    if name == "brain_mask.nii.gz":
        how = (
            "computed with dipy's median_otsu on the mean b0 (the source has no brain mask)"
            if manifest.summary.get("brain_mask_source") == "median_otsu"
            else "the source's own brain mask on its grid"
        )
        return {"Description": f"Brain mask every map was computed in: {how}.", "Type": "Brain"}
    if name == "wm_mask.nii.gz":
        wm_source = manifest.summary.get("wm_source")
        if wm_source == "fa":
            how = f"brain voxels with FA above {params.get('fa_wm_threshold')}"
        elif wm_source in ("segmentation", "aparc"):  # "aparc": its name before BIDS inputs
            how = "the white-matter labels of the source's segmentation, on the diffusion grid"
        else:
            how = f"as chosen by wm_source={params.get('wm_source')}"
        text = f"White-matter mask that seeds and bounds tracking, by {by}: {how}."
        return {"Description": text, "Type": "ROI"}
    tracker = params.get("tracker", "deterministic")
    text = (
        f"Whole-brain {tracker} tractography on CSD fODFs (sh_order_max "
        f"{params.get('sh_order_max')}), seeded in the white-matter mask, by {by}; "
        f"{manifest.summary.get('streamlines', 'n/a')} streamlines. File name per BEP046 (draft)."
    )
    return {"Description": text}


def voxfleet_version() -> str:
    try:
        return version("voxfleet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def dataset_description(series: Series, manifest: Manifest) -> dict[str, Any]:
    """The results root's ``dataset_description.json``, as the first job to export writes it."""
    params = json.dumps(effective_params(manifest), sort_keys=True)
    return {
        "Name": f"voxfleet derivatives of {series.root_uri}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "voxfleet",
                "Version": voxfleet_version(),
                "Description": (
                    f"voxfleet's {manifest.pipeline} pipeline (version "
                    f"{manifest.pipeline_version}) with parameters {params}. Every file's "
                    "sidecar names the job that wrote it (Voxfleet.JobKey, Voxfleet.Manifest)."
                ),
            }
        ],
        "SourceDatasets": [{"URL": series.link_uri}],
        "DatasetLinks": {series.link: series.link_uri},
    }


def bidsignore() -> str:
    """The ``.bidsignore`` at the results root. Folder patterns have no trailing slash: the
    validator tests a folder's path without one, and a file below an ignored folder is ignored."""
    lines = [
        "# voxfleet's own records: campaign plans, and every job's folder",
        f"/{CAMPAIGN_RECORDS}",
        "# <subject>/<pipeline>/: a series id such as sub-01_ses-1_run-2 is a subject folder",
        "/sub-*_*",
        *(f"/*/{pipeline}" for pipeline in sorted(PIPELINE_PARAMS)),
        "# files BIDS does not cover yet (BEP046 tractograms)",
        *UNCOVERED,
    ]
    return "\n".join(lines) + "\n"


def owner(sidecar: bytes) -> str | None:
    """The job key a sidecar names, or None when it is not one of voxfleet's."""
    try:
        value = json.loads(sidecar)
    except ValueError:
        return None
    block = value.get("Voxfleet") if isinstance(value, dict) else None
    key = block.get("JobKey") if isinstance(block, dict) else None
    return key if isinstance(key, str) else None


def to_json(value: dict[str, Any]) -> bytes:
    """Stable bytes: the same content twice is the same object (exports are idempotent)."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


__all__ = [
    "BIDS_VERSION",
    "README",
    "Output",
    "Series",
    "bidsignore",
    "dataset_description",
    "outputs",
    "owner",
    "result_prefix",
    "to_json",
]
