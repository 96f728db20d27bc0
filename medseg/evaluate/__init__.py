"""Evaluation of model outputs against references: segmentation overlap and surface distances; classification
ROC/PR AUC with confidence intervals, operating points and calibration (`roc`, `classification`)."""

from medseg.evaluate.classification import (
    ClassificationReport,
    ClassTable,
    evaluate_classification,
    read_prediction_table,
    write_report,
)
from medseg.evaluate.segmentation import (
    CasePairs,
    FolderScores,
    LabelScores,
    SegmentationScores,
    check_same_grid,
    compare_files,
    compare_labels,
    evaluate_folder,
    evaluate_pairs,
    pair_folders,
    resolve_labels,
    summarize,
    write_scores_csv,
)

__all__ = [
    "CasePairs",
    "ClassTable",
    "ClassificationReport",
    "FolderScores",
    "LabelScores",
    "SegmentationScores",
    "check_same_grid",
    "compare_files",
    "compare_labels",
    "evaluate_classification",
    "evaluate_folder",
    "evaluate_pairs",
    "pair_folders",
    "read_prediction_table",
    "resolve_labels",
    "summarize",
    "write_report",
    "write_scores_csv",
]
