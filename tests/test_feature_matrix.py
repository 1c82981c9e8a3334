"""The README's pipeline x feature matrix is the one the code derives (vidcore.pipelines.features), and the CLI
offers a task's long-video and multi-GPU options exactly where its pipeline has them."""

from pathlib import Path

import pytest

from vidcore.pipelines.features import FEATURES, IMAGE_PIPELINES, capability_table, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- feature-matrix:start -->", "<!-- feature-matrix:end -->"


def test_readme_matrix_is_generated_from_the_code():
    text = README.read_text()
    assert START in text and END in text, "README.md lost its feature-matrix markers"
    between = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert between == markdown_table(), ("README.md's feature matrix is stale; regenerate it with "
                                         "python -c 'from vidcore.pipelines.features import markdown_table; "
                                         "print(markdown_table())'")


def test_table_covers_every_exported_pipeline():
    import vidcore

    # diffusers' names (TextToVideoSDPipeline ...) are the same classes under a second name, and DiffusionPipeline
    # only picks a class: neither is a row of its own; nor are diffusers' image pipelines (no video features)
    exported = {name for name in vidcore.__all__
                if name.endswith("Pipeline") and name not in vidcore.ALIASES and name != "DiffusionPipeline"
                and name not in IMAGE_PIPELINES}
    assert set(capability_table()) == exported


@pytest.mark.parametrize("task_name", ["text-to-video", "video-to-video", "i2vgen-xl", "image-to-video", "animatediff",
                                       "text2video-zero", "edit", "controlled"])
def test_cli_options_follow_the_table(task_name):
    from vidcore.cli import build_parser
    from vidcore.cli.tasks import TASKS

    task = TASKS[task_name]
    row = capability_table()[task.pipeline_class().__name__]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    task_parser = next(a for a in sub._actions if getattr(a, "choices", None) and task_name in a.choices).choices[
        task_name]
    flags = {flag for action in task_parser._actions for flag in action.option_strings}
    assert ("--free-noise" in flags) == row["free_noise"]
    assert ("--free-init" in flags) == row["free_init"]
    assert ("--parallel" in flags) == row["parallel"]
    assert ("--lora" in flags) == row["lora"]
    assert set(row) == set(FEATURES)
