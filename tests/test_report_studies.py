"""Failure studies in the HTML report: a study folder's page, and the run report that finds it."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rewardlab.report.build import build_report
from rewardlab.report.studies import find_studies, markdown_rows, write_study_page
from rewardlab.studies.common import save_figure, write_table
from test_report import make_arm


def _study(out_dir, evil: str = "<script>x</script>") -> None:
    rows = [{"seed": 0, "rate": 0.0, "gain": 0.62}, {"seed": 0, "rate": 0.05, "gain": 1.92, "note": evil}]
    write_table(out_dir, "poison", rows, ["seed", "rate", "gain", "note"], {"seconds": {"s0/rate0": 12.5}})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, out_dir / "study-poison.png")


def test_markdown_rows_reads_a_pipe_table() -> None:
    head, body = markdown_rows("| a | b |\n|---|---|\n| 1 | x |\n| 2 |  |\n")
    assert head == ["a", "b"] and body == [["1", "x"], ["2", ""]]
    assert markdown_rows("no table here") == ([], [])


def test_a_study_page_holds_its_table_figure_and_settings_escaped(tmp_path) -> None:
    _study(tmp_path / "out")
    page = write_study_page(tmp_path / "out", "poison").read_text(encoding="utf-8")
    manifest = json.loads((tmp_path / "out" / "study.json").read_text())
    assert manifest == {"study": "poison", "tables": ["poison"], "figures": ["study-poison.png"]}
    assert "<td>1.920</td>" in page and "<td>0.620</td>" in page  # the table's cells
    assert page.count("data:image/png;base64,") == 1 and "s0/rate0: 12.5" in page
    assert "&lt;script&gt;" in page and "<script" not in page.lower()


def test_the_run_report_shows_the_studies_found_under_the_run(tmp_path) -> None:
    make_arm(tmp_path, "time-pressed", 0, methods=("bon",))
    before = build_report(tmp_path).read_text(encoding="utf-8")
    assert "Failure studies" not in before
    _study(tmp_path / "study-poison")
    _study(tmp_path / "nested" / "study")
    (tmp_path / "plain").mkdir()  # a folder with no study.json is not a study
    for d in (tmp_path / "study-poison", tmp_path / "nested" / "study"):
        write_study_page(d, "poison")
    assert find_studies(tmp_path) == [tmp_path / "nested" / "study", tmp_path / "study-poison"]
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert "Failure studies" in text and text.count("Study: poison") == 2
    assert text.count("data:image/png;base64,") == before.count("data:image/png;base64,") + 2
