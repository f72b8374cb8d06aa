"""Export results into the source scan's study as DICOM objects (SEG, TID 1500 SR, encapsulated PDF).

Kept apart from :mod:`mriquant.report` (HTML/PDF): the two are siblings that do not import each
other; the export only encapsulates the PDF file the report wrote.
"""

from __future__ import annotations

from mriquant.export.dicom import GRID_TOLERANCE, export_dicom, structure_code

__all__ = ["GRID_TOLERANCE", "export_dicom", "structure_code"]
