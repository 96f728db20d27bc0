"""Importers: write a manifest for a public dataset as users have it on disk (images referenced, never copied)."""

from medseg.data.importers._common import ImportResult
from medseg.data.importers.chestxray14 import NIH_CLASSES, import_chestxray14
from medseg.data.importers.chexpert import CHEXPERT_CLASSES, UNCERTAIN_POLICIES, import_chexpert
from medseg.data.importers.totalsegmentator import LOBE_FILES, import_totalsegmentator, merge_lobes

__all__ = [
    "CHEXPERT_CLASSES",
    "LOBE_FILES",
    "NIH_CLASSES",
    "UNCERTAIN_POLICIES",
    "ImportResult",
    "import_chestxray14",
    "import_chexpert",
    "import_totalsegmentator",
    "merge_lobes",
]
