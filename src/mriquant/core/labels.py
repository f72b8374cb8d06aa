"""Label tables: tissue classes and FreeSurfer-compatible structure ids.

Tissue maps use 0 background, 1 CSF, 2 GM, 3 WM. Structure maps use the ids of
FreeSurfer's ``FreeSurferColorLUT.txt`` (e.g. 17/53 hippocampus, 10/49 thalamus),
so outputs open with the right names and colours in FreeSurfer-aware viewers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError


@dataclass(frozen=True)
class Label:
    """One entry of a label table.

    Attributes
    ----------
    id : int
        Voxel value.
    name : str
        Name, FreeSurfer spelling for structures.
    rgb : tuple of int
        Display colour, 0-255 per channel.

    """

    id: int
    name: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class LabelTable:
    """An ordered set of labels with lookup by id and by name."""

    name: str
    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        ids = [lab.id for lab in self.labels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Duplicate ids in label table {self.name}.")

    def __contains__(self, label_id: object) -> bool:
        return any(lab.id == label_id for lab in self.labels)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def by_id(self, label_id: int) -> Label:
        """Return the label with voxel value ``label_id``."""
        for lab in self.labels:
            if lab.id == label_id:
                return lab
        raise InputError(
            f"Expected a label id of table {self.name!r}, found {label_id}; "
            f"known ids: {[lab.id for lab in self.labels]}."
        )

    def by_name(self, name: str) -> Label:
        """Return the label called ``name`` (case-insensitive)."""
        for lab in self.labels:
            if lab.name.lower() == name.lower():
                return lab
        raise InputError(f"Expected a label name of table {self.name!r}, found {name!r}.")

    def name_of(self, label_id: int) -> str:
        """Return the name of ``label_id``, or ``"label-<id>"`` when the table lacks it."""
        return next((lab.name for lab in self.labels if lab.id == label_id), f"label-{label_id}")

    def as_dict(self) -> list[dict[str, object]]:
        """Return the table as JSON-serialisable rows."""
        return [{"id": lab.id, "name": lab.name, "rgb": list(lab.rgb)} for lab in self.labels]


TISSUES = LabelTable(
    "tissues",
    (
        Label(1, "CSF", (60, 60, 200)),
        Label(2, "GM", (200, 80, 80)),
        Label(3, "WM", (240, 240, 240)),
    ),
)
"""Tissue classes: 1 CSF, 2 GM, 3 WM (0 is background)."""


@cache
def freesurfer() -> LabelTable:
    """Return the FreeSurfer structure table shipped in ``mriquant/data/labels/freesurfer.tsv``."""
    text = resources.files("mriquant").joinpath("data/labels/freesurfer.tsv").read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fid, name, r, g, b = line.split("\t")
        if int(fid) != 0:
            rows.append(Label(int(fid), name, (int(r), int(g), int(b))))
    return LabelTable("freesurfer", tuple(rows))


#: The 15 subcortical structures the benchmarks average Dice over.
SUBCORTICAL_15 = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 4, 43, 16)

#: Left/right FreeSurfer id pairs of bilateral structures.
BILATERAL_PAIRS = (
    (2, 41),
    (3, 42),
    (4, 43),
    (5, 44),
    (7, 46),
    (8, 47),
    (10, 49),
    (11, 50),
    (12, 51),
    (13, 52),
    (17, 53),
    (18, 54),
    (26, 58),
    (28, 60),
    (30, 62),
    (31, 63),
)


def tables() -> dict[str, LabelTable]:
    """Return every label table by name."""
    return {"tissues": TISSUES, "freesurfer": freesurfer()}


#: The tissue class (1 CSF, 2 GM, 3 WM) that each FreeSurfer structure's volume measures. Subcortical
#: nuclei are grey matter whatever their T1 intensity (the pallidum is as bright as white matter on a T1),
#: as FreeSurfer counts them; the brain stem is counted as white matter. Ids not listed (vessels, choroid
#: plexus, hypointensities, optic chiasm) belong to no class.
STRUCTURE_TISSUE: dict[int, int] = {
    **dict.fromkeys((4, 43, 5, 44, 14, 15, 24, 72), 1),
    **dict.fromkeys((3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60, 172), 2),
    **dict.fromkeys((2, 41, 7, 46, 16), 3),
}



def structure_classes(dseg: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
    """The tissue class (0 none, 1 CSF, 2 GM, 3 WM) that each voxel's structure measures (:data:`STRUCTURE_TISSUE`)."""
    lookup = np.zeros(max(int(dseg.max(initial=0)), max(STRUCTURE_TISSUE)) + 1, np.uint8)
    lookup[list(STRUCTURE_TISSUE)] = list(STRUCTURE_TISSUE.values())
    return np.asarray(lookup[dseg], dtype=np.uint8)


#: Cortex id -> the white-matter id of the same hemisphere and compartment (cerebrum, cerebellum).
CORTEX_WHITE_MATTER: dict[int, int] = {3: 2, 42: 41, 8: 7, 47: 46}

#: Grey-matter structures that are nuclei (not cortex): anatomy, not intensity, makes them grey matter.
SUBCORTICAL_NUCLEI = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60)
