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
    assert pages == {
        "docs/results.md",
        "docs/pruning.md",
        "docs/handnet.md",
        "docs/article_method.md",
        "docs/measures.md",
        "README.md",
    }
    assert len(RESULT_FILES) == 31


# A number a reader quotes: a decimal, or an integer of 3 digits or more (with or without thousands commas).
QUOTED_NUMBER = r"(?<![\w.])\d[\d,]*\.\d+|(?<![\w.])\d{1,3}(?:,\d{3})+|(?<![\w.\-])\d{3,}(?!\w)"
# Numbers that quote no result: a citation's year ("Morcos et al. 2018"), a package's version
# ("torch 2.14.1") and a goal set before the measurement ("goal 98.5%").
NOT_A_RESULT = r"et al\.,?\s\d{4}|\d+\.\d+\.\d+|goal\s(?:of\s)?\d[\d.]*%"
PAGES = [CHECKOUT / "README.md", *sorted((CHECKOUT / "docs").glob("*.md"))]


def prose_paragraphs(lines: list[str]) -> list[str]:
    """A page's paragraphs of prose: not its tables, ``` blocks or indented lines (commands, examples)."""
    paragraphs, in_block = [[]], False
    for line in lines:
        in_block ^= line.startswith("```")
        if in_block or not line.strip() or line.startswith(("|", "    ", "```")):
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    return ["\n".join(paragraph) for paragraph in paragraphs if paragraph]


def code_constants() -> dict[str, set[str]]:
    """The numbers in each module-level constant of src/ and studies/, e.g. NULL_NET_IMAGES -> {"300"}."""
    numbers = {}
    for path in [*(CHECKOUT / "src").rglob("*.py"), *(CHECKOUT / "studies").glob("*.py")]:
        for name, value in re.findall(r"^([A-Z][A-Z0-9_]+) = (.+)$", path.read_text(), re.MULTILINE):
            numbers.setdefault(name, set()).update(re.findall(r"\d[\d.]*", value.replace("_", "")))
    return numbers


def conf_defaults() -> set[tuple[str, str]]:
    """Each (key, number) set in conf/**/*.yaml, e.g. ("projection_points", "500")."""
    pattern = r"^\s*(\w+): ([\d.]+)\s*(?:#.*)?$"
    return {
        pair
        for path in (CHECKOUT / "conf").rglob("*.yaml")
        for pair in re.findall(pattern, path.read_text(), re.MULTILINE)
    }


def unexplained_numbers(page_text: str, results: str) -> tuple[set[str], list[str]]:
    """The numbers the page's prose quotes, and those in none of its tables, no stored result and no
    setting its paragraph names: a constant of the code (`NULL_NET_IMAGES`) or a config default
    (`report.projection_points=500`). results: the stored result files' text."""
    lines = page_text.splitlines()
    tables = "\n".join(line for line in lines if line.startswith("|"))
    known = set(re.findall(r"[\d.,]+", tables + results))
    constants, defaults = code_constants(), conf_defaults()
    quoted, unexplained = set(), []
    for paragraph in prose_paragraphs(lines):
        settings = {n for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", paragraph) for n in constants.get(name, ())}
        settings |= {
            value for key, value in re.findall(r"`[\w.]*?(\w+)=([\d.]+)`", paragraph) if (key, value) in defaults
        }
        numbers = re.findall(QUOTED_NUMBER, re.sub(NOT_A_RESULT, "", paragraph))
        quoted.update(numbers)
        unexplained += [n for n in numbers if not {n, n.replace(",", "")} & (known | settings)]
    return quoted, unexplained


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_number_in_a_pages_text_is_one_of_its_tables_a_stored_result_or_a_setting_it_names(page):
    quoted, unexplained = unexplained_numbers(page.read_text(), "\n".join(path.read_text() for path in RESULT_FILES))
    assert unexplained == []
    if page.name in ("README.md", "results.md"):
        assert len(quoted) >= 10  # they quote their results


def test_the_prose_check_finds_an_unstored_number_and_passes_a_citation_a_version_a_goal_and_a_setting():
    page = (
        "Liu et al. 2019 reached 97.613% on torch 2.14.1 (goal 99.5%), 12.5% as tabled, `UNTRAINED_SEED_BASE` = 1000,\n"
        "`report.projection_points=500`.\n\n| 12.5 |\n\n`report.projection_points=501` (not its default), 1000 seeds\n"
        "(the constant is named in another paragraph).\n\n    9.876 in a command\n```\n5.432\n```\n"
    )
    quoted = {"97.613", "12.5", "1000", "500", "501"}
    assert unexplained_numbers(page, results="") == (quoted, ["97.613", "501", "1000"])


# A net's layer widths (32/64/128/128) name an architecture, not a measurement.
WIDTHS = r"\d+(?:/\d+){3}"


def hand_written_tables(page_text: str, printed: set[str]) -> list[str]:
    """The page's table blocks that quote a number (QUOTED_NUMBER, widths aside) and are not the output of
    one stored result file (`printed`: what `convdissect tables stored` prints per file)."""
    blocks = [block.rstrip("\n") for block in re.findall(r"(?:^\|.*\n?)+", page_text, re.MULTILINE)]
    return [b for b in blocks if b not in printed and re.search(QUOTED_NUMBER, re.sub(WIDTHS, "", b))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_that_quotes_a_number_is_a_stored_result_file_as_the_command_prints_it(page):
    printed = {render(["stored", str(path)]) for path in RESULT_FILES}
    assert [block.splitlines()[0] for block in hand_written_tables(page.read_text(), printed)] == []


def test_the_table_check_finds_a_hand_written_number_and_passes_words_widths_and_a_stored_table():
    stored = "| net | acc. |\n|---|---|\n| a | 99.1 |"
    words = "| command | what it does |\n|---|---|\n| `train.py` | trains 32/64/128/128 for 3 epochs |"
    hand_written = "| net | acc. |\n|---|---|\n| a | 99.1 |\n| b | 98.7 |"
    page = f"Text 12.5.\n\n{stored}\n\n{words}\n\n{hand_written}\n"
    assert hand_written_tables(page, {stored}) == [hand_written]


def test_a_result_file_whose_row_is_short_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    columns = ["a", "b"]
    bad.write_text(json.dumps({"page": "x.md", "made_by": "-", "measured": "-", "columns": columns, "rows": [["1"]]}))
    with pytest.raises(UserInputError, match=r"has 1 cells, the header 2$"):
        render(["stored", str(bad)])
