"""The ``mriquant`` command line.

One command with subcommands. :func:`main` takes ``argv`` so tests call it
in-process. Heavy imports happen inside the subcommands so ``--help`` is instant.
Every :class:`~mriquant.core.errors.MriquantError` becomes one line on stderr and
exit code 2; nothing is written for a failed command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mriquant import __version__
from mriquant.core import outputs as out
from mriquant.core.errors import MriquantError

Handler = Callable[[argparse.Namespace], int]

#: Exit code of subcommands whose implementation has not landed yet.
EXIT_NOT_AVAILABLE = 3


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="scan: NIfTI, MGZ, MINC, NRRD, MHA, or DICOM folder/zip/file")
    p.add_argument("--volume", type=int, metavar="N", help="volume of a 4D input to use (0-based)")
    p.add_argument(
        "--series",
        metavar="ID",
        help="DICOM series to use when a folder holds several: SeriesInstanceUID, SeriesNumber or "
        "1-based index of the listing",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def _add_method_flags(p: argparse.ArgumentParser, argv: Sequence[str], *, default: str | None) -> None:
    """Add the flags of the method named by ``--method`` in ``argv`` (only that method is imported)."""
    from mriquant.cli_options import add_method_options, method_from_argv

    name = method_from_argv(argv, default)
    if name is None or p.prog.split()[-1] not in argv:
        return
    from mriquant.segment.base import registry

    cls = registry().get(name)
    if cls is not None:
        add_method_options(p, name, cls.options_type)


SubParsers = Any  # argparse's _SubParsersAction (private type)


def _build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mriquant",
        description="MRI segmentation and quantification: raw scan in, measurements out.",
    )
    parser.add_argument("--version", action="version", version=f"mriquant {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info_convert(sub)
    _add_preprocess(sub)
    _add_segment_run(sub, argv)
    _add_longitudinal(sub)
    _add_evaluate_train(sub)
    return parser


def _add_info_convert(sub: SubParsers) -> None:
    p = sub.add_parser("info", help="formats, methods, models, label tables and versions")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("convert", help="convert a scan to NIfTI in its native grid (+ JSON sidecar)")
    _add_input_options(p)
    p.add_argument("output", type=Path, help="output .nii or .nii.gz; a .json sidecar is written beside it")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(handler=_cmd_convert)


def _add_preprocess(sub: SubParsers) -> None:
    p = sub.add_parser("preprocess", help="N4, skull stripping, MNI152 registration, normalisation")
    _add_input_options(p)
    _add_output_options(p)
    p.add_argument(
        "--steps",
        nargs="+",
        metavar="STEP",
        default=None,
        help="steps to run, from denoise, n4, skullstrip, register, normalize (default: n4 skullstrip register)",
    )
    p.add_argument(
        "--registration",
        choices=["rigid", "affine", "syn"],
        default="affine",
        help="registration to MNI152 2009 (default: affine; syn is deformable)",
    )
    p.add_argument(
        "--normalize",
        choices=["wm-peak", "zscore", "nyul"],
        default="wm-peak",
        help="intensity normalisation used by the normalize step (default: wm-peak)",
    )
    p.add_argument("--save-field", action="store_true", help="also write the N4 bias field (bias_field.nii.gz)")
    p.add_argument("--skullstripped", action="store_true", help="input is already skull-stripped")
    p.set_defaults(handler=_cmd_preprocess)


def _add_segment_run(sub: SubParsers, argv: Sequence[str]) -> None:
    p = sub.add_parser("segment", help="segment tissues and/or structures with one method")
    _add_input_options(p)
    _add_output_options(p)
    p.add_argument("--method", required=True, help="segmentation method (see `mriquant info`)")
    p.add_argument("--skullstripped", action="store_true", help="input is already skull-stripped")
    p.set_defaults(handler=_cmd_segment)
    _add_method_flags(p, argv, default=None)

    p = sub.add_parser("run", help="the full pipeline: preprocess, segment, quantify, report")
    _add_input_options(p)
    _add_output_options(p)
    p.add_argument(
        "--method",
        default=None,
        help="instead of the default (deep: tissues and structures in one pass): a tissue method (paired with "
        "atlas structures), a structure method (paired with mrf tissues) or another dual one (see `mriquant info`)",
    )
    p.add_argument("--no-structures", action="store_true", help="tissues only (no dseg.nii.gz)")
    p.add_argument("--save-maps", action="store_true", help="also write tissue probability and partial-volume maps")
    p.add_argument("--skullstripped", action="store_true", help="input is already skull-stripped")
    p.set_defaults(handler=_cmd_run)
    _add_method_flags(p, argv, default=None)


def _add_longitudinal(sub: SubParsers) -> None:
    p = sub.add_parser("longitudinal", help="change between a baseline and a follow-up scan")
    p.add_argument("baseline", type=Path)
    p.add_argument("followup", type=Path)
    _add_output_options(p)
    p.add_argument(
        "--interval-years",
        type=float,
        metavar="Y",
        help="time between the scans (used when the inputs are not both DICOM with dates)",
    )
    p.add_argument("--skullstripped", action="store_true", help="both inputs are already skull-stripped")
    p.add_argument("--no-structures", action="store_true", help="tissues only (no atlas structures, faster)")
    p.add_argument(
        "--pbvc-method",
        choices=("edge", "jacobian"),
        default="edge",
        help="how the brain volume change is measured: edge-profile boundary shift (default) or Jacobian "
        "integration of the SyN registration (structures always use the Jacobian)",
    )
    p.set_defaults(handler=_cmd_longitudinal)


def _add_evaluate_train(sub: SubParsers) -> None:
    p = sub.add_parser("evaluate", help="compare a label map with a reference: Dice, HD95, ASSD, volume")
    p.add_argument("pred", type=Path, help="predicted label map")
    p.add_argument("truth", type=Path, help="reference label map (any grid: resampled by world coordinates)")
    p.add_argument(
        "--map",
        type=Path,
        metavar="FILE",
        help="label mapping applied to TRUTH (TSV: source id, target id), or a shipped name: miccai2012-to-freesurfer",
    )
    p.add_argument("--labels", type=int, nargs="+", metavar="ID", help="only these labels")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("train", help="train the dual-task segmentation network (--method deep)")
    from mriquant.training.options import add_arguments

    add_arguments(p)
    p.set_defaults(handler=_cmd_train)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="mriquant: %(levelname)s: %(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 on success, 2 on bad input (one line on stderr), 3 for a subcommand
        that has not landed yet.

    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(args_list)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.verbose, args.quiet)
    args.argv = args_list
    try:
        return int(args.handler(args))
    except MriquantError as exc:
        message = " ".join(str(exc).split())
        print(f"mriquant {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mriquant {args.command}: interrupted; nothing was written.", file=sys.stderr)
        return 130


def _display(args: argparse.Namespace) -> Any:
    """The per-step progress display on stderr (:mod:`mriquant.cli_progress`); silent with ``-q``."""
    from mriquant.cli_progress import StepDisplay

    return StepDisplay(args.command, quiet=args.quiet)


def _elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _cmd_info(args: argparse.Namespace) -> int:
    from mriquant.info import describe, render_text

    info = describe()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(render_text(info))
    return 0


def _read_input(args: argparse.Namespace) -> Any:
    """The case of ``args.input`` (step ``"read"``), with the size floor of the analysis commands."""
    from mriquant.pipeline import read_case

    return read_case(args.input, volume=args.volume, series=args.series)


def _cmd_convert(args: argparse.Namespace) -> int:
    from mriquant.convert import check_output, convert
    from mriquant.core.case import record_step
    from mriquant.pipeline import read_case

    check_output(args.output, inputs=[args.input], force=args.force)
    t0 = time.perf_counter()
    with _display(args) as display:
        image = read_case(args.input, volume=args.volume, series=args.series, min_voxels=1).image
        with record_step([], "write"):
            nii, sidecar = convert(image, args.output, inputs=[args.input], force=args.force)
        display.finish(f"wrote {nii} and {sidecar} ({_elapsed(t0)})")
    return 0


Writer = Callable[[Any, Path, Callable[[list[str]], dict[str, Any]]], list[str]]


def _single_input(args: argparse.Namespace, *, parameters: dict[str, Any], process: Callable[[Any], Any],
                  write: Writer) -> int:  # fmt: skip
    """Read -> ``process`` -> ``write`` -> ``manifest.json`` in an atomic output folder: every one-scan command.

    ``write(case, folder, document)`` writes the command's files and returns their names; ``document(outputs)``
    is the manifest as it stands (for a report that shows it).
    """
    from mriquant import manifest
    from mriquant.io import output_folder, write_json

    started, t0 = _now(), time.perf_counter()
    with _display(args) as display:
        with output_folder(args.output, force=args.force, inputs=[args.input]) as staging:
            case = process(_read_input(args))

            def document(outputs: list[str]) -> dict[str, Any]:
                return manifest.build(
                    command=args.command, argv=args.argv, parameters=parameters, inputs=[args.input],
                    outputs=outputs, steps=case.provenance, started=started, seconds=time.perf_counter() - t0,
                    extra={"input_geometry": _geometry(case.image)},
                )  # fmt: skip

            outputs = [*write(case, staging, document), out.MANIFEST]
            write_json(document(outputs), staging / out.MANIFEST)
        display.finish(f"wrote {args.output} ({_elapsed(t0)})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mriquant.cli_options import options_from_args
    from mriquant.pipeline import QuantifyStep, RunConfig, run_pipeline, write_run_outputs
    from mriquant.segment import get_segmenter

    options = options_from_args(args, get_segmenter(args.method).options_type) if args.method else None
    config = RunConfig.for_method(args.method, options, skullstripped=args.skullstripped)
    if args.no_structures:
        config = config.without_structures()
    return _single_input(
        args, parameters=config.as_dict(), process=lambda case: QuantifyStep()(run_pipeline(case, config)),
        write=lambda case, folder, document: write_run_outputs(
            case, folder, manifest=document([]), source=args.input, maps=args.save_maps
        ),
    )  # fmt: skip


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from mriquant.pipeline import DEFAULT_STEPS, PreprocessConfig, preprocess, write_preprocess_outputs

    config = PreprocessConfig(
        steps=tuple(args.steps or DEFAULT_STEPS),
        registration=args.registration,
        normalize=args.normalize,
        save_bias_field=args.save_field,
        skullstripped=args.skullstripped,
    )
    return _single_input(args, parameters=config.as_dict(), process=lambda case: preprocess(case, config),
                         write=lambda case, folder, _: write_preprocess_outputs(case, folder))  # fmt: skip


def _cmd_segment(args: argparse.Namespace) -> int:
    from mriquant.cli_options import options_from_args
    from mriquant.pipeline import prepare_for_segmentation, registration_for, write_segment_outputs
    from mriquant.segment.base import SegmentStep, get_segmenter

    cls = get_segmenter(args.method)
    segmenter = cls(options_from_args(args, cls.options_type))

    def process(case: Any) -> Any:
        prepared = prepare_for_segmentation(case, skullstripped=args.skullstripped,
                                            registration=registration_for([segmenter]))  # fmt: skip
        return SegmentStep(segmenter)(prepared)

    params = {"method": args.method, "skullstripped": args.skullstripped, "options": segmenter.params()}
    return _single_input(args, parameters=params, process=process,
                         write=lambda case, folder, _: write_segment_outputs(case, folder))  # fmt: skip


def _cmd_longitudinal(args: argparse.Namespace) -> int:
    from mriquant.core.errors import InputError
    from mriquant.core.progress import scope
    from mriquant.io import output_folder
    from mriquant.pipeline import RunConfig, prepare_for_segmentation, read_case, run_pipeline
    from mriquant.quantify import longitudinal as lg

    if args.interval_years is not None and not args.interval_years > 0:
        raise InputError(f"Expected --interval-years > 0, found {args.interval_years}; give the time between "
                            "the scans in years.")  # fmt: skip
    # the classical pair: the per-structure changes need its SyN registration (a network needs only an affine)
    config = RunConfig.classical(skullstripped=args.skullstripped, structures=not args.no_structures)
    started, t0 = _now(), time.perf_counter()
    with _display(args) as display:
        with output_folder(args.output, force=args.force, inputs=[args.baseline, args.followup]) as staging:
            baseline = read_case(args.baseline)
            with scope("followup"):  # the names the manifest gives the follow-up's steps
                followup = read_case(args.followup)
            interval, source = lg.resolve_interval(baseline.image, followup.image, args.interval_years)
            with scope("followup"):  # first: it is cheaper and refuses a non-brain
                followup = prepare_for_segmentation(followup, skullstripped=args.skullstripped, registration=None)
            baseline = run_pipeline(baseline, config)
            options = lg.LongitudinalOptions(pbvc_method=args.pbvc_method)
            with baseline.step("longitudinal", {"options": options.as_dict()}):
                result = lg.measure_change(baseline, followup, options=options)
            change = lg.change_document(result, interval_years=interval, interval_source=source)
            _write_longitudinal_outputs(args, staging, baseline, followup, change, config, started, t0)
        display.finish(f"wrote {args.output} (PBVC {change['pbvc_percent']:.2f} %, {_elapsed(t0)})")
    return 0


def _write_longitudinal_outputs(
    args: argparse.Namespace, staging: Path, baseline: Any, followup: Any, change: dict[str, Any], config: Any,
    started: str, t0: float,
) -> list[str]:  # fmt: skip
    """Write change.json/.csv, the report and manifest.json of ``longitudinal``; return the names.

    The steps ``"quantify"``, ``"write"`` and ``"report"`` are recorded on ``baseline``.
    """
    from mriquant import manifest
    from mriquant.io import write_json
    from mriquant.io.write import atomic_path
    from mriquant.pipeline import QuantifyStep
    from mriquant.quantify.longitudinal import change_csv
    from mriquant.report import build_change_report

    baseline = QuantifyStep()(baseline)
    volumes = baseline.measurements["volumes"]
    with baseline.step("write") as recorded:
        write_json(change, staging / out.CHANGE_JSON)
        with atomic_path(staging / out.CHANGE_CSV) as tmp:
            tmp.write_text(change_csv(change))
        recorded["files"] = [out.CHANGE_JSON, out.CHANGE_CSV]

    def document(outputs: list[str]) -> dict[str, Any]:
        followup_steps = (dataclasses.replace(s, name=f"followup {s.name}") for s in followup.provenance)
        return manifest.build(
            command="longitudinal", argv=args.argv,
            parameters={**config.as_dict(), "interval_years": args.interval_years},
            inputs=[args.baseline, args.followup], outputs=outputs, steps=[*baseline.provenance, *followup_steps],
            started=started, seconds=time.perf_counter() - t0,
            extra={"input_geometry": {"baseline": _geometry(baseline.image), "followup": _geometry(followup.image)}},
        )  # fmt: skip

    outputs = [out.CHANGE_JSON, out.CHANGE_CSV]
    with baseline.step("report") as recorded:
        recorded["files"] = build_change_report(
            staging, baseline=baseline.images.get("preproc", baseline.image),
            followup=followup.images.get("preproc", followup.image), change=change, volumes=volumes,
            manifest=document([]), brain_mask=baseline.labels.get("brain_mask"), tissue=baseline.labels.get("tissue"),
            dseg=baseline.labels.get("dseg"), qc=volumes.get("qc"),
        )  # fmt: skip
    outputs += [*recorded["files"], out.MANIFEST]
    write_json(document(outputs), staging / out.MANIFEST)
    return outputs


def _geometry(image: Any) -> dict[str, Any]:
    return {
        "shape": list(image.shape),
        "spacing_mm": [round(s, 6) for s in image.spacing],
        "orientation": image.axcodes,
        "affine": image.affine.round(6).tolist(),
    }


def _cmd_train(args: argparse.Namespace) -> int:
    from mriquant.training.deep import command

    return command(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mriquant.evaluate import command

    return command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
