"""Review package of a `medseg run` output: offline pages whose images load, the review sheet and its summary."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.cli.review import review
from medseg.errors import InputError
from medseg.evaluate.roc import wilson_interval
from medseg.export.review import (
    REVIEW_COLUMNS,
    WHOLE_CASE,
    summarize_review,
    write_case_page,
    write_review_csv,
    write_review_package,
)

WORKFLOW = """\
version: 1
name: review-test
inputs: {path: studies, series: {min_slices: 10}}
steps:
  - lung_mask
  - statistics
  - export: {nifti: true, dicom_seg: false, overlays: true, review_html: false}
output: {dir: out}
"""


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: two phantom CTs and one study with a missing slice (fails); review package written."""
    from medseg.data.phantom.ct_case import synth_ct_case

    root = tmp_path_factory.mktemp("review")
    for n in range(2):
        synth_ct_case(root / "studies" / f"good {n}", seed=40 + n, size=80, slices=32, findings=[])
    gap = synth_ct_case(root / "studies" / "gap", seed=31, size=80, slices=32, findings=[]).folder / "ct"
    sorted(gap.iterdir())[15].unlink()
    (root / "wf.yaml").write_text(WORKFLOW)
    result = CliRunner().invoke(main, ["--quiet", "run", str(root / "wf.yaml"), "--output", str(root / "out")])
    assert result.exit_code == 0, result.output
    out = root / "out"
    written = write_review_package(out)
    assert written["review_csv"] == out / "review.csv" and written["index"] == out / "index.html"
    return out


def _case_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/case.json"))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "a":
            self.hrefs.append(values.get("href") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _pages(out: Path) -> list[Path]:
    return [out / "index.html", *(folder / "review.html" for folder in _case_dirs(out))]


def test_pages_are_offline_and_every_image_and_link_exists(run_out: Path) -> None:
    cases = _case_dirs(run_out)
    assert len(cases) == 2
    for page in _pages(run_out):
        assert page.is_file(), page
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text
        links = _parse(page)
        assert links.images, f"{page} shows no image"
        for target in [*links.images, *links.hrefs]:
            assert not target.startswith(("/", "file:", "data:")), (page, target)
            assert (page.parent / unquote(target)).is_file(), (page, target)
    index = _parse(run_out / "index.html")
    text = " ".join(index.text)
    record = json.loads((run_out / "run.json").read_text())
    failed = [c for c in record["cases"] if c["status"] == "failed"]
    assert len(failed) == 1 and "missing slice" in failed[0]["reason"]
    assert failed[0]["reason"] in text and failed[0]["case_id"] in text
    assert not any(failed[0]["case_id"] in href for href in index.hrefs)          # failures are not linked
    assert {unquote(h) for h in index.hrefs if h.endswith("review.html")} == \
        {f"{c.name}/review.html" for c in cases}


def test_case_page_shows_flags_statistics_and_links_back(run_out: Path) -> None:
    folder = _case_dirs(run_out)[0]
    page = folder / "review.html"
    text = " ".join(_parse(page).text)
    stats = json.loads((folder / "statistics.json").read_text())
    for row in stats["rows"]:
        assert row["name"] in text and f"{row['volume_ml']:.1f}" in text
    for flag in stats["flags"]:
        assert flag["message"] in text
    assert "../index.html" in _parse(page).hrefs
    assert _parse(page).images == ["overlay.png"]
    with pytest.raises(InputError, match=r"no case\.json"):
        write_case_page(run_out / "no-such-case")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("chromium is not on PATH: install it (Debian package `chromium`: apt-get install chromium) to run "
                "the headless page check")


def _loaded_images(browser: str, page: Path, profile: Path) -> tuple[int, int]:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's image check did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


def test_headless_chromium_loads_every_image(run_out: Path, tmp_path: Path) -> None:
    browser = _chromium()
    for page in (run_out / "index.html", _case_dirs(run_out)[0] / "review.html"):
        loaded, total = _loaded_images(browser, page, tmp_path / "profile")
        assert total > 0 and loaded == total, (page, loaded, total)


def _read_sheet(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_review_sheet_has_one_row_per_case_and_structure(run_out: Path) -> None:
    rows = _read_sheet(run_out / "review.csv")
    assert rows and list(rows[0]) == list(REVIEW_COLUMNS)
    expected = []
    for folder in _case_dirs(run_out):
        stats = json.loads((folder / "statistics.json").read_text())
        case_id = json.loads((folder / "case.json").read_text())["case_id"]
        expected += [(case_id, row["name"]) for row in stats["rows"]] + [(case_id, WHOLE_CASE)]
    assert sorted((r["case_id"], r["structure"]) for r in rows) == sorted(expected)
    assert all(r["decision"] == "" and r["reviewer"] == "" for r in rows)
    total = next(r for r in rows if r["structure"] == "total")
    assert total["model_value"].endswith("mL (100.0 %)")


def _fill(rows: list[dict[str, str]], path: Path, reviewers: dict[str, list[str]]) -> Path:
    """Two (or more) reviewers on the same rows; decisions given per reviewer in row order."""
    filled = [{**row, "decision": decisions[n], "reviewer": name}
              for name, decisions in reviewers.items() for n, row in enumerate(rows)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REVIEW_COLUMNS))
        writer.writeheader()
        writer.writerows(filled)
    return path


def _decisions(count: int, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    return [bool(x) for x in rng.random(count) < 0.7]


def test_summary_acceptance_rates_and_kappa(run_out: Path, tmp_path: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    rows = _read_sheet(run_out / "review.csv")
    a, b = _decisions(len(rows), 1), _decisions(len(rows), 2)
    assert a != b
    spell_a = ["Accept" if x else "r" for x in a]                     # spellings differ; meaning does not
    spell_b = ["YES" if x else "reject" for x in b]
    sheet = _fill(rows, tmp_path / "review.csv", {"dr_a": spell_a, "dr_b": spell_b})
    summary = summarize_review(sheet)
    assert summary.reviewers == ["dr_a", "dr_b"] and summary.pending == 0
    assert summary.overall.reviewed == 2 * len(rows) and summary.overall.accepted == sum(a) + sum(b)
    low, high = wilson_interval(sum(a) + sum(b), 2 * len(rows))
    assert summary.overall.low == pytest.approx(low) and summary.overall.high == pytest.approx(high)
    for entry in summary.structures:
        picked = [n for n, r in enumerate(rows) if r["structure"] == entry.structure]
        accepted = sum(a[n] for n in picked) + sum(b[n] for n in picked)
        assert (entry.reviewed, entry.accepted) == (2 * len(picked), accepted), entry
        assert entry.rate == pytest.approx(accepted / (2 * len(picked)))
        rejected_cases = {rows[n]["case_id"] for n in picked if not (a[n] and b[n])}
        assert entry.cases_with_rejection == len(rejected_cases)
    [pair] = summary.agreement
    assert pair.items == len(rows)
    assert pair.kappa == pytest.approx(cohen_kappa_score(a, b))
    assert pair.agreement == pytest.approx(np.mean(np.array(a) == np.array(b)))
    data = json.loads(summary.to_json())
    assert data["overall"]["accepted"] == sum(a) + sum(b) and data["agreement"][0]["kappa"] == pytest.approx(pair.kappa)


def test_bad_decision_names_the_line(run_out: Path, tmp_path: Path) -> None:
    rows = _read_sheet(run_out / "review.csv")
    decisions = ["accept"] * len(rows)
    decisions[2] = "maybe"
    sheet = _fill(rows, tmp_path / "bad.csv", {"dr_a": decisions})
    with pytest.raises(InputError, match=r"line 4: decision 'maybe'") as caught:
        summarize_review(sheet)
    assert caught.value.path == str(sheet)
    (tmp_path / "columns.csv").write_text("case_id,structure,verdict\nx,total,accept\n")
    with pytest.raises(InputError, match=r"missing column.*decision"):
        summarize_review(tmp_path / "columns.csv")


def test_filled_sheet_is_never_overwritten(run_out: Path) -> None:
    sheet = run_out / "review.csv"
    original = sheet.read_text()
    assert write_review_csv(run_out) == sheet                          # still empty: refreshed in place
    rows = _read_sheet(sheet)
    _fill(rows, sheet, {"dr_a": ["a"] + [""] * (len(rows) - 1)})
    filled = sheet.read_text()
    try:
        written = write_review_csv(run_out)
        assert written == run_out / "review.new.csv"
        assert sheet.read_text() == filled
        assert written.read_text() == original
        assert write_review_package(run_out)["review_csv"] == written
        assert "review.new.csv" in (run_out / "index.html").read_text()
    finally:
        sheet.write_text(original)
        (run_out / "review.new.csv").unlink(missing_ok=True)
        write_review_package(run_out)


def test_cli_summarize(run_out: Path, tmp_path: Path) -> None:
    rows = _read_sheet(run_out / "review.csv")
    sheet = _fill(rows, tmp_path / "review.csv", {"dr_a": _decisions_text(len(rows), 3),
                                                   "dr_b": _decisions_text(len(rows), 4)})
    result = CliRunner().invoke(review, ["summarize", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "dr_a / dr_b" in result.output
    result = CliRunner().invoke(review, ["summarize", str(sheet), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["overall"]["reviewed"] == 2 * len(rows)
    bad = _fill(rows, tmp_path / "bad.csv", {"dr_a": ["nope"] * len(rows)})
    result = CliRunner().invoke(review, ["summarize", str(bad)])
    assert result.exit_code == 2 and "line 2" in result.output and "bad.csv" in result.output


def _decisions_text(count: int, seed: int) -> list[str]:
    return ["accept" if x else "reject" for x in _decisions(count, seed)]


def test_xray_case_page_and_sheet(tmp_path: Path) -> None:
    """A classified radiograph (case.json as `medseg run` writes it): probabilities table and one row per class."""
    from PIL import Image

    out, folder = tmp_path / "out", tmp_path / "out" / "img 0"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 80, 3), 90, np.uint8)).save(folder / "gradcam.png")
    case = {"case_id": "img 0", "kind": "xray", "source": "/data/img0.png", "status": "done", "reason": "",
            "seconds": 0.3, "timings": {"read": 0.1, "classify": 0.07, "gradcam": 0.2},
            "outputs": {"gradcam": "gradcam.png"}, "flags": [],
            "summary": {"probabilities": {"effusion": 0.91, "nodule": 0.12}, "calls": {"effusion": 1, "nodule": 0}},
            "notes": []}
    (folder / "case.json").write_text(json.dumps(case))
    (out / "run.json").write_text(json.dumps({"workflow": "cxr", "cases": [case], "counts": {"done": 1}}))
    write_review_package(out)
    page = (folder / "review.html").read_text()
    assert "gradcam.png" in page and re.search(r"<tr class='positive'><td class=l>effusion", page)
    assert "<tr class=''><td class=l>nodule" in page
    assert "img%200/review.html" in (out / "index.html").read_text()
    rows = _read_sheet(out / "review.csv")
    assert [(r["structure"], r["model_value"]) for r in rows] == [("effusion", "0.9100 (positive)"),
                                                                   ("nodule", "0.1200 (negative)")]


def test_top_finding_prefers_a_called_class_over_a_higher_uncalled_probability() -> None:
    from medseg.export.review.records import ReviewCase, top_finding

    def case(probabilities: dict, calls: dict) -> ReviewCase:
        return ReviewCase(Path("c"), {"case_id": "c", "summary": {"probabilities": probabilities, "calls": calls}},
                     None, "")

    # emphysema's threshold is 0.99 (rare class, weighted loss): 0.95 is below it; effusion 0.4 is called
    assert top_finding(case({"emphysema": 0.95, "effusion": 0.4}, {"emphysema": 0, "effusion": 1})) == \
        ("effusion", 0.4, True)
    assert top_finding(case({"emphysema": 0.95, "effusion": 0.4}, {"emphysema": 0, "effusion": 0})) == \
        ("emphysema", 0.95, False)


# --- label-free QC flags on the review pages ---------------------------------------------------------------


def _qc_case(out: Path) -> Path:
    """A CT case folder as `medseg run` writes it, whose lung mask has a failed split and a detached island."""
    from dataclasses import asdict

    from scipy import ndimage

    from medseg.data.phantom.ct_case import synth_ct_case
    from medseg.export.overlay import save_label_montage
    from medseg.export.statistics import label_volumes, lobe_statistics, write_statistics
    from medseg.infer.lungmask import body_mask
    from medseg.io import Volume, load_volume, read_nifti
    from medseg.labels import label_map
    from medseg.workflow.processing import CaseOutcome

    phantom = synth_ct_case(out.parent / "qc_studies" / "qc case", seed=5, size=96, slices=48, findings=[])
    volume = load_volume(phantom.folder / "ct")
    lungs = np.asarray(read_nifti(phantom.folder / "lungs.nii.gz").array).copy()
    left = np.argwhere(lungs == 2)
    lungs[tuple(left[left[:, 2] < np.quantile(left[:, 2], 0.85)].T)] = 1          # most of the left lung: "right"
    room = ndimage.binary_erosion(body_mask(volume), iterations=3) & ~ndimage.binary_dilation(lungs > 0, iterations=3)
    centre = np.argwhere(ndimage.binary_erosion(room, np.ones((5, 5, 5), bool)))[0]
    lungs[tuple(slice(c - 2, c + 3) for c in centre)] = 1                           # a detached island
    folder = out / "qc case"
    folder.mkdir(parents=True)
    stats = lobe_statistics(volume, lungs, "lungs", labels_source="qc case")
    write_statistics(stats, folder / "statistics.csv", folder / "statistics.json")
    save_label_montage(volume, lungs, folder / "overlay.png", title="qc case", label_map=label_map("lungs"))
    outcome = CaseOutcome("qc case", "ct", "qc_studies/qc case/ct", "done", seconds=1.0,
                          outputs={"statistics_csv": "statistics.csv", "statistics_json": "statistics.json",
                                   "overlay": "overlay.png"},
                          flags=sorted({flag.code for flag in stats.flags}), folder="qc case",
                          summary={"volumes_ml": label_volumes(Volume(lungs, volume.affine),
                                                               label_map("lungs").names())})
    (folder / "case.json").write_text(json.dumps(asdict(outcome)))
    (out / "run.json").write_text(json.dumps({"workflow": "qc", "cases": [asdict(outcome)], "counts": {"done": 1}}))
    return folder


def test_qc_flags_and_reasons_on_the_review_pages(tmp_path: Path) -> None:
    from medseg.export.review.parts import FLAG_HELP, INFO_FLAGS, RED_FLAGS, flag_colour, flagged

    out = tmp_path / "out"
    folder = _qc_case(out)
    write_review_package(out)
    stats = json.loads((folder / "statistics.json").read_text())
    codes = {flag["code"] for flag in stats["flags"]}
    assert {"lung_split_failed", "lung_islands"} <= codes, stats["flags"]
    case = json.loads((folder / "case.json").read_text())
    assert {"lung_split_failed", "lung_islands"} <= set(case["flags"])
    page = (folder / "review.html").read_text(encoding="utf-8")
    text = " ".join(_parse(folder / "review.html").text)
    for flag in stats["flags"]:
        assert flag["message"] in text                                  # every reason, in full, on the case page
    assert "left lung is" in text and "the left/right split likely failed" in text
    assert "class='pill flag red'" in page and "class='pill flag muted'" in page
    assert "<div class='panel red'>" in page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "lung_split_failed" in index and "tr class='flagged red'" in index
    rows = _read_sheet(out / "review.csv")
    assert "lung_split_failed" in next(r for r in rows if r["structure"] == "left_lung")["flags"]
    assert "lung_islands" in next(r for r in rows if r["structure"] == WHOLE_CASE)["flags"]
    new = {"lung_split_failed", "lung_outside_body", "lobes_out_of_order", "lobe_fragmented", "lung_islands"}
    assert new <= set(FLAG_HELP)
    assert {"lung_split_failed", "lobes_out_of_order"} <= RED_FLAGS
    assert "lung_islands" in INFO_FLAGS
    assert flag_colour("lung_islands") == "muted" and flagged(["lung_islands"]) == "flagged info"
    assert flagged(["lung_islands", "lobe_fragmented"]) == "flagged"
    assert "<div class=label>flagged</div><div class=value>1</div>" in index
    # A case with low-severity flags only is not counted as flagged on the index page.
    case["flags"] = ["lung_islands"]
    (folder / "case.json").write_text(json.dumps(case))
    write_review_package(out)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<div class=label>flagged</div><div class=value>0</div>" in index
    assert "<div class=label>low-severity flags only</div><div class=value>1</div>" in index
