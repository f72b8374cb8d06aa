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
    assert len(rows) == 3 + len(volumes["structures"])
    assert {r["name"] for r in rows if r["kind"] == "structure"} == {r["name"] for r in volumes["structures"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "Left-Hippocampus" in html and "http://" not in html and "https://" not in html
    return volumes


@pytest.mark.slow
@pytest.mark.skipif(not MICCAI.is_dir(), reason="needs ../shared/data/miccai2012 (real expert-labelled T1)")
def test_run_on_a_skull_stripped_nifti(tmp_path: Path) -> None:
    from mriquant.evaluate import apply_map, evaluate_labels, load_map
    from mriquant.io import read_labels

    scan = MICCAI / "1000_SS.nii.gz"
    out = tmp_path / "out"
    assert main(["-q", "run", str(scan), "-o", str(out), "--skullstripped"]) == 0
    assert {p.name for p in out.iterdir()} == CONTRACT
    img = nib.load(str(scan))
    _check_outputs(out, img.affine, img.shape)
    truth = apply_map(read_labels(MICCAI / "1000_glm.nii.gz"), load_map("miccai2012-to-freesurfer"))
    scores = evaluate_labels(read_labels(out / "dseg.nii.gz"), truth, labels=SUBCORTICAL)
    # the shipped atlas follows FreeSurfer's protocol, the truth Neuromorphometrics': a floor, not the benchmark
    assert np.mean([s.dice for s in scores]) > 0.7


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
