"""The step protocol (mriquant.core.step): a name, frozen options, __call__(case) -> case that records itself."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mriquant import __version__
from mriquant.core.case import Case
from mriquant.core.step import CaseStep, NoOptions, run_steps
from mriquant.preprocess.bias import N4Step, N4StepOptions
from mriquant.preprocess.denoise import DenoiseStep
from mriquant.preprocess.normalize import NormalizeOptions, NormalizeStep
from mriquant.preprocess.register import RegisterOptions, RegisterStep
from mriquant.preprocess.skullstrip import SkullStripStep
from mriquant.segment import get_segmenter
from mriquant.segment.base import SegmentStep
from mriquant.segment.reconcile import ReconcileStep
from mriquant.testing.phantom import Phantom

STEP_CLASSES = (N4Step, SkullStripStep, RegisterStep, NormalizeStep, DenoiseStep, ReconcileStep)


@pytest.mark.parametrize("cls", STEP_CLASSES, ids=lambda c: c.__name__)
def test_every_step_has_a_name_and_frozen_default_options(cls: type[CaseStep[Any]]) -> None:
    step = cls()
    assert isinstance(step.name, str) and step.name
    assert dataclasses.is_dataclass(step.options)
    field = next(iter(dataclasses.fields(step.options)), None)
    if field is not None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(step.options, field.name, None)


def _case(phantom: Phantom) -> Case:
    return Case(phantom.image, labels={"brain_mask": phantom.brain_mask})


def test_steps_record_name_options_version_seconds_and_leave_the_input(phantom: Phantom) -> None:
    case = _case(phantom)
    steps: list[CaseStep[Any]] = [
        N4Step(N4StepOptions(shrink=2, iterations=(5, 5))),
        NormalizeStep(NormalizeOptions(method="zscore")),
    ]
    out = run_steps(case, steps)
    assert case.provenance == [] and "preproc" not in case.images  # the input case is untouched
    assert [s.name for s in out.provenance] == ["n4", "normalize"]
    n4 = out.provenance[0]
    assert n4.params["shrink"] == 2 and n4.params["iterations"] == (5, 5) and n4.params["mask"] == "brain_mask"
    assert n4.version == __version__ and n4.seconds >= 0
    assert out.provenance[1].params == {"method": "zscore", "mask": "brain_mask"}
    assert out.images["normalized"].shape == phantom.image.shape


def test_a_new_step_is_one_class(phantom: Phantom) -> None:
    @dataclasses.dataclass(frozen=True)
    class ClipOptions:
        ceiling: float = 100.0

    class ClipStep(CaseStep[ClipOptions]):
        name = "clip"
        options_type = ClipOptions

        def apply(self, case: Case, record: dict[str, Any]) -> None:
            clipped = np.minimum(case.image.array, self.options.ceiling)
            record["clipped_voxels"] = int((case.image.array > self.options.ceiling).sum())
            case.images["preproc"] = case.image.with_array(clipped)

    out = ClipStep(ClipOptions(ceiling=50.0))(_case(phantom))
    assert out.images["preproc"].array.max() <= 50.0
    assert out.provenance[-1].name == "clip" and out.provenance[-1].params["ceiling"] == 50.0
    assert out.provenance[-1].params["clipped_voxels"] > 0


def test_segment_step_is_named_for_its_method_and_records_its_options(phantom: Phantom) -> None:
    step = SegmentStep(get_segmenter("otsu")())
    assert step.name == "segment:otsu"
    out = step(_case(phantom))
    assert out.provenance[-1].name == "segment:otsu" and out.provenance[-1].params["method"] == "otsu"
    assert "tissue" in out.labels


def test_register_options_refuse_an_unknown_kind() -> None:
    with pytest.raises(Exception, match="Expected kind"):
        RegisterOptions(kind="bspline")  # type: ignore[arg-type]


def test_no_options_is_recorded_as_nothing() -> None:
    assert ReconcileStep().options == NoOptions()


def test_run_is_a_list_of_steps_with_one_registration_decision() -> None:
    from mriquant.pipeline import RunConfig, StrippedMaskStep, pipeline_steps, registration_for

    default = pipeline_steps(RunConfig())
    assert [s.name for s in default] == ["n4", "skullstrip", "register", "segment:deep", "reconcile"]
    assert isinstance(default[2], RegisterStep) and default[2].options.kind == "affine"
    classical = pipeline_steps(RunConfig.classical())
    assert [s.name for s in classical][-3:] == ["segment:mrf", "segment:atlas", "reconcile"]
    assert [s.options.kind for s in classical if isinstance(s, RegisterStep)] == ["syn"]  # atlas's SyN serves both
    stripped = pipeline_steps(RunConfig(skullstripped=True, structures=False))
    assert isinstance(stripped[0], StrippedMaskStep) and [s.name for s in stripped][1:] == [
        "n4", "register", "segment:deep"]  # fmt: skip
    assert registration_for([get_segmenter("otsu")()]) is None
    assert registration_for([get_segmenter("deep")(), get_segmenter("atlas")()]) == "syn"


def test_quantify_is_a_step_and_the_report_reads_the_measured_case(phantom: Phantom, tmp_path: Any) -> None:
    from mriquant.pipeline import QuantifyStep
    from mriquant.report import report_case

    case = SegmentStep(get_segmenter("otsu")())(_case(phantom))
    with pytest.raises(Exception, match="Expected a measured case"):
        report_case(tmp_path, case, manifest={})
    measured = QuantifyStep()(case)
    assert "volumes" not in case.measurements and measured.provenance[-1].name == "quantify"
    volumes = measured.measurements["volumes"]
    assert volumes["units"] == "mL" and volumes["tissues"]["gm_ml"] > 0
    assert report_case(tmp_path, measured, manifest={}) == ["report.html", "report.pdf"]
