"""`convdissect tables`: the shared run discovery and cells, the hparams table, and bad input, in-process
on real (tiny) runs. The other tables are tested beside what they read (test_results_table,
test_handnet_frontier, test_pruning, test_prune_article, test_untangle)."""

import json
import re
import shutil

import pytest

from convdissect.cli import tables_main
from convdissect.errors import UserInputError
from convdissect.tables import render
from convdissect.tables.common import mean_sd, training_runs
from convdissect.train import train
from tests.helpers import CHECKOUT, TINY, compose_cfg


def test_mean_sd_leaves_out_missing_values_and_gives_one_value_no_sd():
    assert mean_sd([0.99, 0.98, None, float("nan")], 2, 100) == "98.50 ± 0.71"
    assert mean_sd([0.321]) == "0.321"
    assert mean_sd([None]) == "-"


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two tiny runs of the same config but the seed, trained in-process as a sweep's jobs would be."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1):
        train(compose_cfg("train", [*TINY, f"seed={seed}", "threads=1"], root / str(seed)))
    return root


@pytest.mark.slow  # two_seeds trains
def test_runs_are_found_once_and_a_run_without_metrics_is_named(two_seeds, tmp_path):
    shutil.copytree(two_seeds, tmp_path / "sweep")
    broken = tmp_path / "sweep" / "2"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "config.yaml").write_text("seed: 2\ntrainer: {max_epochs: 1}\n")
    (tmp_path / "sweep" / "0" / "dissect" / ".hydra").mkdir(parents=True)  # a dissection: not a training run
    (tmp_path / "sweep" / "0" / "dissect" / ".hydra" / "config.yaml").write_text("ckpt_path: x\n")
    runs, missing = training_runs([tmp_path / "sweep", tmp_path / "sweep" / "0"])  # 0 named twice
    assert [r.name for r in runs] == ["0", "1"] and missing == [broken]
    assert f"no metrics.json in {broken}" in render(["results", str(tmp_path / "sweep")])


@pytest.mark.slow  # two_seeds trains
def test_hparams_table_shows_the_key_that_differs_and_the_metrics(two_seeds):
    table = render(["hparams", str(two_seeds)]).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[0] == "run" and "seed" in header and "test/acc" in header
    assert "model.widths" not in header  # the same in both runs
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [(row[0], row[header.index("seed")]) for row in rows] == [("0", "0"), ("1", "1")]
    assert all(0 <= float(row[header.index("test/acc")]) <= 1 for row in rows)


@pytest.mark.parametrize("table", ["results", "criteria", "pruning", "frontier", "hparams", "untangle"])
def test_a_missing_dir_is_one_error_line_and_exit_status_2(table, tmp_path, capsys):
    with pytest.raises(UserInputError, match="is not a directory"):
        render([table, str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exit_:
        tables_main([table, str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: RUN_DIRS: {tmp_path / 'nowhere'} is not a directory\n"


RESULT_FILES = sorted((CHECKOUT / "docs" / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.stem)
def test_each_docs_table_is_its_result_file_as_the_command_prints_it(path):
    stored = json.loads(path.read_text())
    printed = render(["stored", str(path)])
    assert printed.count("\n") == len(stored["rows"]) + 1  # header, rule, one line per row
    assert f"\n{printed}\n" in (CHECKOUT / stored["page"]).read_text()


def test_the_result_files_cover_every_table_the_command_made():
    pages = {json.loads(path.read_text())["page"] for path in RESULT_FILES}
    assert pages == {"docs/results.md", "docs/pruning.md", "docs/handnet.md", "docs/article_method.md", "README.md"}
    assert len(RESULT_FILES) == 10


# A number a reader quotes: a decimal, or an integer of 3 digits or more (with or without thousands commas).
QUOTED_NUMBER = r"(?<![\w.])\d[\d,]*\.\d+|(?<![\w.])\d{1,3}(?:,\d{3})+|(?<![\w.\-])\d{3,}(?!\w)"


def test_every_number_in_the_readmes_text_is_one_of_its_tables_or_a_stored_result():
    lines = (CHECKOUT / "README.md").read_text().splitlines()
    tables = "\n".join(line for line in lines if line.startswith("|"))
    results = "\n".join(path.read_text() for path in RESULT_FILES)
    text = [line for line in lines if not line.startswith(("|", "    "))]  # prose, not tables or commands
    quoted = {number for line in text for number in re.findall(QUOTED_NUMBER, line)}
    assert len(quoted) >= 10  # the README quotes its results
    assert [
        n for n in sorted(quoted) if not {n, n.replace(",", "")} & set(re.findall(r"[\d.,]+", tables + results))
    ] == []


def test_a_result_file_whose_row_is_short_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    columns = ["a", "b"]
    bad.write_text(json.dumps({"page": "x.md", "made_by": "-", "measured": "-", "columns": columns, "rows": [["1"]]}))
    with pytest.raises(UserInputError, match=r"has 1 cells, the header 2$"):
        render(["stored", str(bad)])
