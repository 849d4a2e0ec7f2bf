"""``voxfleet synth ...``: synthetic inputs in the real layouts (HCP, BIDS, QSIPrep subjects;
a bundle atlas of their tracts; micro-CT fiber phantoms), for tests, the demo and trying a
pipeline without data."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from producer.console import console, friendly
from shared.settings import get_settings

app = typer.Typer(
    help="Generate synthetic inputs (HCP, BIDS, QSIPrep subjects; fiber phantoms).",
    no_args_is_help=True,
)


@app.command("hcp")
@friendly
def synth_hcp(
    uri: Annotated[str, typer.Argument(help="Where to write: a path or s3://bucket/prefix.")],
    subjects: Annotated[int, typer.Option(min=1, max=100_000, help="How many subjects.")] = 1,
    size: Annotated[
        str, typer.Option(help="small | medium | hcp (real 145x174x145x288).")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Random seed; subject i uses seed + i.")] = 0,
) -> None:
    """Write synthetic subjects in the HCP layout (DWI, bvals, bvecs, mask, aparc+aseg)."""
    from rich.progress import Progress

    from producer.synth.hcp import write_subjects
    from shared.store import open_store

    store = open_store(uri, get_settings())
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"writing {subjects} {size} subject(s)", total=subjects)
        ids = write_subjects(
            store,
            subjects,
            size=size,
            seed=seed,
            progress=lambda n: progress.update(task, completed=n),
        )
    console.print(
        f"wrote {len(ids)} subject(s) to {store.uri}: {', '.join(ids[:5])}"
        + (" ..." if len(ids) > 5 else "")
    )


@app.command("atlas")
@friendly
def synth_atlas(
    uri: Annotated[str, typer.Argument(help="Where to write: a path or s3://bucket/prefix.")],
    seed: Annotated[int, typer.Option(help="The reference anatomy's seed.")] = 0,
) -> None:
    """Write a bundle atlas of the synthetic brain's tracts (CC, CST_L/R, SLF_L/R), for
    `--param bundles_atlas=URI` on synthetic subjects: the tractometry recipe with no data."""
    from producer.synth.atlas import write_tract_atlas
    from shared.store import open_store

    written = write_tract_atlas(open_store(uri, get_settings()), seed=seed)
    console.print(f"{uri}: {len(written)} model bundles", highlight=False)


@app.command("bids")
@friendly
def synth_bids(
    uri: Annotated[str, typer.Argument(help="The dataset's root: a path or s3://bucket/prefix.")],
    subjects: Annotated[
        int, typer.Option(min=1, max=100_000, help="How many subjects (sub-01, sub-02, ...).")
    ] = 1,
    sessions: Annotated[
        int, typer.Option(min=0, max=99, help="Sessions per subject (0: no ses- level).")
    ] = 0,
    runs: Annotated[int, typer.Option(min=1, max=99, help="DWI runs per session.")] = 1,
    layout: Annotated[
        str, typer.Option(help="bids (raw BIDS) | qsiprep (QSIPrep derivatives).")
    ] = "bids",
    multishell: Annotated[
        bool, typer.Option(help="b=1000 and b=2000 shells instead of b=1000 alone.")
    ] = False,
    size: Annotated[str, typer.Option(help="small | medium | hcp.")] = "small",
    seed: Annotated[int, typer.Option(help="Cohort seed; with a label it fixes a subject.")] = 0,
) -> None:
    """Write synthetic subjects (the `synth hcp` brains) as raw BIDS or QSIPrep derivatives."""
    from rich.progress import Progress

    from producer.synth.bids import numbered_subjects, write_bids
    from shared.store import open_store

    store = open_store(uri, get_settings())
    cohort = numbered_subjects(subjects, sessions, runs, multishell=multishell)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"writing {subjects} {size} subject(s)", total=subjects)
        keys = write_bids(
            store,
            cohort,
            size,
            layout=layout,  # type: ignore[arg-type]  # write_bids checks it
            seed=seed,
            progress=lambda n: progress.update(task, completed=n),
        )
    console.print(f"wrote {len(cohort)} subject(s), {len(keys)} DWI series, to {store.uri}")


@app.command("fibers")
@friendly
def synth_fibers(
    uri: Annotated[str, typer.Argument(help="The Zarr array to write: a path or s3://...zarr.")],
    shape: Annotated[int, typer.Option(min=8, max=2048, help="Side of the cubic volume.")] = 256,
    fibers: Annotated[
        int | None, typer.Option(min=0, help="How many fibers (default: reach --volume-fraction).")
    ] = None,
    volume_fraction: Annotated[
        float | None,
        typer.Option(min=0.01, max=0.6, help="Target fiber volume fraction [default: 0.35]."),
    ] = None,
    radius: Annotated[
        float | None,
        typer.Option(min=0.5, help="Fiber radius in voxels, all alike [default: uniform in 4..7]."),
    ] = None,
    noise: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Noise SD as a share of the fiber-matrix contrast (16000) [default: 0.125].",
        ),
    ] = None,
    blur: Annotated[
        float | None,
        typer.Option(min=0, help="Point-spread sigma, voxels; 0: no blur [default: 0.7]."),
    ] = None,
    contact: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Share of fibers placed touching an earlier one (surfaces --gap apart) "
            "[default: 0].",
        ),
    ] = None,
    gap: Annotated[
        float | None,
        typer.Option(
            help="Least surface-to-surface distance of fibers, voxels; 0 or negative (pressed "
            "in) only with --contact [default: 1; 0 with --stress]."
        ),
    ] = None,
    crossing_share: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=0.99,
            help="Share of fibers laid along a second direction, passing through the others "
            "[default: 0].",
        ),
    ] = None,
    crossing_deg: Annotated[
        float | None,
        typer.Option(
            help="Angle of the second direction to the first, degrees: from the tilt (3) to "
            "30 more [default: 30]."
        ),
    ] = None,
    stress: Annotated[
        bool,
        typer.Option(
            "--stress",
            help="Issue #19's stress phantom: VF 0.30, radius 4, noise 0.25, no blur, half the "
            "fibers touching, a quarter crossing at 30 degrees; the options above override it.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
) -> None:
    """Write a micro-CT phantom of a fiber composite (uint16 Zarr v3) and, beside it, its
    ground-truth mask (``_truth/NAME``, where listing the folder for a campaign skips it)."""
    from dataclasses import replace

    from rich.progress import Progress

    from producer.synth.fibers import PhantomSpec, stress_spec, write_phantom

    side = (shape, shape, shape)
    base = stress_spec(side, seed) if stress else PhantomSpec(shape=side, seed=seed)
    given: dict[str, Any] = {
        "fibers": fibers,
        "volume_fraction": volume_fraction,
        "radius": None if radius is None else (radius, radius),
        "noise": None if noise is None else noise * (base.fiber - base.matrix),
        "psf": blur,
        "contact": contact,
        "gap": gap,
        "crossing_share": crossing_share,
        "crossing_deg": crossing_deg,
    }
    spec = replace(base, **{k: v for k, v in given.items() if v is not None})
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"writing a {shape}^3 phantom", total=shape)
        phantom = write_phantom(
            uri, spec, get_settings(), progress=lambda n: progress.update(task, advance=n)
        )
    console.print(
        f"wrote {uri}: {len(phantom.fibers)} fibers, volume fraction "
        f"{phantom.volume_fraction:.4f}; ground truth at {phantom.info['truth_uri']}"
    )
