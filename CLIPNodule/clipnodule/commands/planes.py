"""`clipnodule planes`: write the nine model planes of one nodule for visual error analysis."""

from __future__ import annotations

import argparse

from .nodule_input import add_nodule_arguments, prepare_output_dir, resolve_nodule_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `planes` subcommand."""
    parser = subparsers.add_parser(
        "planes",
        help="write the nine 224 x 224 planes the model sees (planes.npy, planes.png)",
        description=(
            "Cut the nine planes through the nodule and write planes.npy (9 x 224 x 224 float32 "
            "after the [-1000, 500] HU window scaled to [0, 1], before CLIP normalisation; the cubic-spline "
            "sampling of the oblique planes can overshoot that range slightly, as in the published "
            "pipeline) and planes.png."
        ),
    )
    add_nodule_arguments(parser)
    parser.add_argument("--output", required=True, help="folder for planes.npy and planes.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule planes`."""
    import numpy as np

    from ..coordinates import to_lps
    from ..image_io import load_ct
    from ..outputs import save_planes_png
    from ..planes import PLANE_NAMES
    from ..preprocess import extract_planes

    image_path, point, system = resolve_nodule_arguments(args)
    output = prepare_output_dir(args.output)
    nodule = extract_planes(load_ct(image_path), to_lps(point, system))

    np.save(output / "planes.npy", nodule.planes.astype(np.float32))
    save_planes_png(nodule.planes, output / "planes.png", PLANE_NAMES, title="Model input planes")
    print(f"Wrote {output / 'planes.npy'} and {output / 'planes.png'}")
    return 0
