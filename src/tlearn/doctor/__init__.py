"""Dataset checks before training: bad files, copies and leakage, label errors, imbalance."""

from tlearn.doctor.findings import KINDS, Finding, write_issues
from tlearn.doctor.inputs import Catalog, load_catalog
from tlearn.doctor.run import DoctorResult, Extractor, run_doctor

__all__ = [
    "KINDS",
    "Catalog",
    "DoctorResult",
    "Extractor",
    "Finding",
    "load_catalog",
    "run_doctor",
    "write_issues",
]
