"""Workflow files: schema, YAML-line errors with suggestions, step rules, overrides, `medseg validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medseg.cli import main
from medseg.configfile import ConfigSchemaError
from medseg.errors import ConfigError
from medseg.workflow import load_workflow

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

LOBES = """\
version: 1
name: lobes
inputs:
  path: studies
steps:
  - lung_mask
  - segment_lobes: {model: models/lobes.safetensors}
  - statistics
  - export: {nifti: true, dicom_seg: true}
output: {dir: out}
"""


def _write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_workflows_match_the_schema(path: Path) -> None:
    workflow = load_workflow(path)
    assert workflow.version == 1 and workflow.steps


def test_steps_paths_and_defaults(tmp_path: Path) -> None:
    workflow = load_workflow(_write(tmp_path, LOBES))
    assert [s.kind for s in workflow.steps] == ["lung_mask", "segment_lobes", "statistics", "export"]
    assert workflow.inputs.path == tmp_path / "studies"                            # relative to the file
    assert workflow.step("segment_lobes").model == tmp_path / "models" / "lobes.safetensors"
    assert workflow.output.dir == Path("out")                                      # relative to the CWD
    assert workflow.inputs.series.selection_rules().modalities == ("CT",)
    assert workflow.executor.kind == "local" and workflow.fail_on_error is False


@pytest.mark.parametrize(("edit", "expected"), [
    (("segment_lobes: {model: models/lobes.safetensors}", "segment_lobes: {model: m.safetensors, tta_: true}"),
     ["line 7", "unknown key 'tta_'", "did you mean 'tta'"]),
    (("  - statistics", "  - statistic"), ["unknown step 'statistic'", "did you mean 'statistics'"]),
    (("output: {dir: out}", "output: {dir: out, layout: '{case}'}"), ["line 10", "layout field(s) ['case']"]),
    (("version: 1", "version: 2"), ["line 1", "version"]),
    (("  path: studies", "  path: studies\n  manifest: m.yaml"), ["exactly one of inputs.path"]),
    (("  - lung_mask\n", ""), []),   # still valid: segment_lobes precedes statistics
])
def test_schema_errors_name_the_line_and_suggest(tmp_path: Path, edit: tuple[str, str], expected: list[str]) -> None:
    path = _write(tmp_path, LOBES.replace(*edit))
    if not expected:
        load_workflow(path)
        return
    with pytest.raises(ConfigSchemaError) as caught:
        load_workflow(path)
    message = str(caught.value)
    for part in expected:
        assert part in message, message
    assert str(path) in str(caught.value.path)


def test_step_order_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="statistics needs lung_mask or segment_lobes before it"):
        load_workflow(_write(tmp_path, LOBES.replace("  - lung_mask\n", "").replace(
            "  - segment_lobes: {model: models/lobes.safetensors}\n", "")))
    no_inputs = yaml.safe_load(LOBES)
    del no_inputs["inputs"]
    with pytest.raises(ConfigError, match="inputs: required"):
        load_workflow(_write(tmp_path, yaml.safe_dump(no_inputs), "b.yaml"))
    auc = ("version: 1\nname: x\ninputs: {path: .}\nsteps:\n  - export: {auc_report: {labels: l.csv}}\n"
           "output: {dir: o}\n")
    with pytest.raises(ConfigError, match="auc_report needs classify_cxr"):
        load_workflow(_write(tmp_path, auc, "c.yaml"))
    train_only = "version: 1\nname: t\nsteps:\n  - train: {config: c.yaml}\noutput: {dir: o}\n"
    assert load_workflow(_write(tmp_path, train_only, "d.yaml")).inputs is None


def test_overrides_set_nested_keys_and_step_options(tmp_path: Path) -> None:
    workflow = load_workflow(_write(tmp_path, LOBES), {"inputs.path": "/data/other", "steps.1.tta": True,
                                                        "steps.0.kind": "lung_mask", "executor.workers": 3})
    assert workflow.inputs.path == Path("/data/other")
    assert workflow.step("segment_lobes").tta is True and workflow.executor.workers == 3
    with pytest.raises(ConfigError, match="not a step index"):
        load_workflow(_write(tmp_path, LOBES), {"steps.9.tta": True})


def test_validate_command_checks_the_named_files(tmp_path: Path) -> None:
    path = _write(tmp_path, LOBES)
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "studies does not exist" in result.output and "no such file" in result.output
    (tmp_path / "studies").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lobes.safetensors").write_bytes(b"x")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "lung_mask -> segment_lobes -> statistics -> export" in result.output and "valid" in result.output
    result = runner.invoke(main, ["validate", str(path), "--set", "steps.1.batch_size=0"])
    assert result.exit_code == 2 and "batch_size" in result.output


def test_training_config_errors_also_name_the_line(tmp_path: Path) -> None:
    from medseg.train.config import load_train_config

    config = _write(tmp_path, "task: lobes\ndata:\n  manifest: m.yaml\n  train_split: [train]\npreprocessing: p.yaml\n",
                    "train.yaml")
    with pytest.raises(ConfigSchemaError, match=r"line 4: data: unknown key 'train_split' \(did you mean "
                                                r"'train_splits'\?\)"):
        load_train_config(config)


PREPARED = """\
version: 1
name: prepared
inputs: {path: "${output}/data/studies"}
steps:
  - synthesize: {dataset: ct, cases: 2, size: 64, out: "${output}/data/studies"}
  - synthesize: {dataset: cxr, cases: 4, size: 64, out: "${output}/data/cxr"}
  - train: {config: train.yaml, set: {output: "${output}/models/lobes"}}
  - segment_lobes: {model: "${output}/models/lobes/best.safetensors"}
  - export: {nifti: true}
output: {dir: runs/demo}
"""


def test_output_placeholder_follows_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows").mkdir()
    path = _write(tmp_path / "flows", PREPARED)
    run = tmp_path / "runs" / "demo"
    workflow = load_workflow(path)
    assert workflow.inputs.path == run / "data" / "studies"            # not relative to the file's folder
    assert [s.out for s in workflow.steps if s.kind == "synthesize"] == [run / "data" / "studies", run / "data" / "cxr"]
    assert workflow.step("train").set == {"output": str(run / "models" / "lobes")}
    assert workflow.step("train").config == tmp_path / "flows" / "train.yaml"   # plain paths: still the file's
    moved = load_workflow(path, {"output.dir": "/srv/elsewhere"})      # --output moves everything with it
    assert moved.step("segment_lobes").model == Path("/srv/elsewhere/models/lobes/best.safetensors")
    with pytest.raises(ConfigError, match=r"output\.dir cannot contain"):
        load_workflow(path, {"output.dir": "${output}/x"})


def test_preparation_steps_repeat_but_come_first(tmp_path: Path) -> None:
    workflow = load_workflow(_write(tmp_path, PREPARED))
    assert [s.kind for s in workflow.steps][:3] == ["synthesize", "synthesize", "train"]
    late = PREPARED.replace("  - export: {nifti: true}\n", "  - export: {nifti: true}\n  - synthesize: "
                                                           "{dataset: ct, cases: 1, out: x}\n")
    with pytest.raises(ConfigError, match=r"steps\[5\] synthesize runs once before any case"):
        load_workflow(_write(tmp_path, late, "late.yaml"))
    with pytest.raises(ConfigError, match="dataset"):
        load_workflow(_write(tmp_path, PREPARED.replace("dataset: cxr", "dataset: mri"), "bad.yaml"))


def test_validate_warns_about_files_earlier_steps_will_write(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("task: lobes\n")
    result = CliRunner().invoke(main, ["validate", str(_write(tmp_path, PREPARED)), "--set",
                                       f"output.dir={tmp_path / 'run'}"])
    assert result.exit_code == 0, result.output
    assert "does not exist yet (steps[0] synthesize writes it)" in result.output
    assert "an earlier train step must produce it" in result.output
