"""QC reports: one self-contained HTML page per participant/session and a group page."""

from t2starmap.report.group import write_group_report
from t2starmap.report.participant import write_participant_reports

__all__ = ["write_group_report", "write_participant_reports"]
