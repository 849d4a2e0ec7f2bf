"""The HCP Young Adult layout: one folder per subject, ``T1w/Diffusion/{data.nii.gz, bvals,
bvecs, nodif_brain_mask.nii.gz}`` and FreeSurfer's ``T1w/aparc+aseg.nii.gz``. A job's input URI
is the subject's folder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from shared.layouts.base import Found, Layout, SubjectFiles
from shared.store import ObjectStore

DWI_KEY = "T1w/Diffusion/data.nii.gz"
BVALS_KEY = "T1w/Diffusion/bvals"
BVECS_KEY = "T1w/Diffusion/bvecs"
MASK_KEY = "T1w/Diffusion/nodif_brain_mask.nii.gz"
APARC_KEY = "T1w/aparc+aseg.nii.gz"
HEAD_THREADS = 32  # S3 HEAD latency dominates discovery; this many in flight hide it


class HcpLayout(Layout):
    name = "hcp"

    def detect(self, store: ObjectStore) -> bool:
        return store.exists(DWI_KEY) or any(
            store.exists(f"{name}/{DWI_KEY}") for name in store.children()[:20]
        )

    def discover(self, store: ObjectStore, root_uri: str) -> list[Found]:
        if store.exists(DWI_KEY):  # the root is itself a subject
            return [Found(root_uri.rstrip("/"), root_uri.rstrip("/").rsplit("/", 1)[-1])]
        names = store.children()
        with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
            found = list(pool.map(lambda name: store.exists(f"{name}/{DWI_KEY}"), names))
        return [
            Found(f"{root_uri.rstrip('/')}/{name}", name)
            for name, ok in zip(names, found, strict=True)
            if ok
        ]

    def files(self, store: ObjectStore, key: str) -> SubjectFiles:
        base = f"{key.rstrip('/')}/" if key else ""
        return SubjectFiles(
            layout=self.name,
            dwi=base + DWI_KEY,
            bval=base + BVALS_KEY,
            bvec=base + BVECS_KEY,
            mask=base + MASK_KEY,
            segmentation=base + APARC_KEY if store.exists(base + APARC_KEY) else None,
        )
