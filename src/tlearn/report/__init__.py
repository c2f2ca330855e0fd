"""What people look at: the HTML report, its figures, Grad-CAM heat maps and explanations.

Calibration itself (fitting the temperature) lives in `tlearn.models.calibration`, where training
can reach it; this package draws and explains.
"""

from tlearn.report.build import REPORT_NAME, write_report

__all__ = ["REPORT_NAME", "write_report"]
