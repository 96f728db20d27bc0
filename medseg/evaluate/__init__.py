"""Evaluation of model outputs against references (segmentation overlap and surface distances)."""

from medseg.evaluate.segmentation import (
    LABEL_SETS,
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
    "LABEL_SETS",
    "CasePairs",
    "FolderScores",
    "LabelScores",
    "SegmentationScores",
    "check_same_grid",
    "compare_files",
    "compare_labels",
    "evaluate_folder",
    "evaluate_pairs",
    "pair_folders",
    "resolve_labels",
    "summarize",
    "write_scores_csv",
]
