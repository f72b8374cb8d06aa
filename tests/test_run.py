"""``mriquant run`` end to end on real scans: every contract output, on the native grid, consistent values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriquant.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MICCAI = DATA / "miccai2012" / "train"
PHILIPS = DATA / "dicom" / "philips-t1-mprage"
CONTRACT = {"brain_mask.nii.gz", "tissue.nii.gz", "dseg.nii.gz", "volumes.csv", "volumes.json", "report.html",
            "report.pdf", "manifest.json"}  # fmt: skip
#: Floor of the default run's 15-structure Dice on held-out subject 1013 (bench/deep.py measured it; see there).
RUN_DICE_FLOOR = 0.78
#: The 15 subcortical structures of the benchmarks (FreeSurfer ids).
SUBCORTICAL = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 4, 43, 16)


def _check_outputs(out: Path, affine: np.ndarray, shape: tuple[int, ...]) -> dict:
    for name in ("brain_mask", "tissue", "dseg"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == shape, name
        np.testing.assert_allclose(img.affine, affine, atol=1e-4, err_msg=name)
    volumes = json.loads((out / "volumes.json").read_text())
    assert volumes["units"] == "mL"
    dseg = np.asarray(nib.load(str(out / "dseg.nii.gz")).dataobj)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    by_label = {row["label"]: row for row in volumes["structures"]}
    for label in SUBCORTICAL:
        assert by_label[label]["volume_ml"] == pytest.approx(np.count_nonzero(dseg == label) * voxel_ml, rel=1e-4)
    mask = np.asarray(nib.load(str(out / "brain_mask.nii.gz")).dataobj)
    assert volumes["etiv_ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml, rel=1e-4)
    assert 900 < volumes["etiv_ml"] < 2200
    tissue = volumes["tissues"]
    assert tissue["parenchyma_ml"] == pytest.approx(tissue["gm_ml"] + tissue["wm_ml"], abs=1e-3)
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    assert [r["kind"] for r in rows].count("structure") == len(volumes["structures"])
    assert [r["kind"] for r in rows].count("tissue") == 3
    assert {r["name"] for r in rows if r["kind"] == "structure"} == {r["name"] for r in volumes["structures"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "Left-Hippocampus" in html and "http://" not in html and "https://" not in html
    return volumes


@pytest.mark.slow
@pytest.mark.skipif(not MICCAI.is_dir(), reason="needs ../shared/data/miccai2012 (real expert-labelled T1)")
def test_run_on_a_skull_stripped_nifti(tmp_path: Path) -> None:
    """The default (``deep``) on a subject the network never saw (1013, held out from its training)."""
    from mriquant.evaluate import apply_map, evaluate_labels, load_map
    from mriquant.io import read_labels

    scan = MICCAI / "1013_SS.nii.gz"
    out = tmp_path / "out"
    assert main(["-q", "run", str(scan), "-o", str(out), "--skullstripped"]) == 0
    assert {p.name for p in out.iterdir()} == CONTRACT
    img = nib.load(str(scan))
    _check_outputs(out, img.affine, img.shape)
    truth = apply_map(read_labels(MICCAI / "1013_glm.nii.gz"), load_map("miccai2012-to-freesurfer"))
    scores = evaluate_labels(read_labels(out / "dseg.nii.gz"), truth, labels=SUBCORTICAL)
    assert np.mean([s.dice for s in scores]) > RUN_DICE_FLOOR
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["tissue_method"] == "deep" and manifest["parameters"]["structure_method"] is None


def test_run_method_pairs_a_classical_method_with_the_other_kind() -> None:
    from mriquant.pipeline import RunConfig

    assert (RunConfig.for_method(None).tissue_method, RunConfig.for_method(None).structure_method) == ("deep", None)
    assert (RunConfig.for_method("deep").tissue_method, RunConfig.for_method("deep").structure_method) == ("deep", None)
    kmeans = RunConfig.for_method("kmeans", skullstripped=True)
    assert (kmeans.tissue_method, kmeans.structure_method, kmeans.skullstripped) == ("kmeans", "atlas", True)
    atlas = RunConfig.for_method("atlas")
    assert (atlas.tissue_method, atlas.structure_method) == ("mrf", "atlas")
    tissues_only = RunConfig().without_structures()
    assert (tissues_only.tissue_method, tissues_only.structure_method, tissues_only.structures) == ("deep", None, False)
    assert tissues_only.tissue_options.structures is False  # deep is told to skip its structures
    assert RunConfig.for_method("kmeans").without_structures().tissue_options is None  # nothing to tell kmeans
    classical = RunConfig.classical(structures=False)
    assert (classical.tissue_method, classical.structure_method) == ("mrf", None)


def test_run_pipeline_honours_structures_false_given_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """RunConfig(structures=False) built without without_structures() still tells deep to skip its structures."""
    import mriquant.pipeline as pipeline
    from mriquant.core.case import Case
    from mriquant.pipeline import RunConfig
    from mriquant.testing import make_phantom

    seen: list[object] = []

    def stop(config: RunConfig) -> list[object]:
        seen.append(config)
        raise RuntimeError("stop before preprocessing")

    monkeypatch.setattr(pipeline, "_segmenters", stop)
    with pytest.raises(RuntimeError, match="stop before"):
        pipeline.run_pipeline(Case(make_phantom(shape=(16, 16, 16)).image), RunConfig(structures=False))
    (config,) = seen
    assert config.tissue_options.structures is False and config.structure_method is None


@pytest.mark.slow
@pytest.mark.skipif(not PHILIPS.is_dir(), reason="needs ../shared/data/dicom/philips-t1-mprage (real DICOM series)")
def test_run_on_a_dicom_series_writes_seg_and_sr(tmp_path: Path) -> None:
    import highdicom as hd

    from mriquant.io import read_image

    out = tmp_path / "out"
    assert main(["-q", "run", str(PHILIPS), "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == CONTRACT | {"seg.dcm", "sr.dcm", "report_pdf.dcm"}
    image = read_image(PHILIPS)
    volumes = _check_outputs(out, image.affine, image.shape)
    seg = hd.seg.segread(out / "seg.dcm")
    names = {d.SegmentLabel for d in seg.SegmentSequence}
    assert {"Left-Hippocampus", "Right-Thalamus"} <= names
    assert seg.StudyInstanceUID == image.meta["dicom"]["StudyInstanceUID"]
    sr = hd.sr.srread(out / "sr.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    assert len(volumes["structures"]) == len(seg.SegmentSequence)


@pytest.mark.slow
def test_default_run_without_structures_on_a_simulated_head(tmp_path: Path) -> None:
    """The default method end to end on the shipped 2 mm simulated head (no ../shared data needed)."""
    from mriquant.core.image import Image
    from mriquant.io import write_image
    from mriquant.preprocess.skullstrip_atlas import load_head_atlases

    heads = load_head_atlases()
    head, fraction = heads.atlas(0)
    brain = fraction.array > 0.5
    scan = tmp_path / "head.nii.gz"
    write_image(Image(np.where(brain, head.array, 0).astype(np.float32), head.affine.copy()), scan)
    out = tmp_path / "out"
    assert main(["-q", "run", str(scan), "-o", str(out), "--skullstripped", "--no-structures"]) == 0
    assert {p.name for p in out.iterdir()} == CONTRACT - {"dseg.nii.gz"}
    tissue = np.asarray(nib.load(str(out / "tissue.nii.gz")).dataobj)
    truth = heads.class_fractions(0)[1:4].argmax(0) + 1
    for label in (2, 3):  # GM, WM against the simulation's majority class inside the brain
        a, b = (tissue == label) & brain, (truth == label) & brain
        assert 2 * np.sum(a & b) / (a.sum() + b.sum()) > 0.9
    volumes = json.loads((out / "volumes.json").read_text())
    assert volumes["structures"] == [] and volumes["tissues"]["gm_ml"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["structures"] is False
    assert manifest["parameters"]["tissue_options"]["structures"] is False
    deep = next(step for step in manifest["steps"] if step["name"] == "segment:deep")
    assert "confidence" not in deep["params"]["info"]  # the structures were not computed at all
