"""Every notebook of the course runs top to bottom (fast mode), is committed clean, and fits Binder's memory.

Fast mode (TEACHKIT_FAST=1) takes the same code path with smaller budgets. The course's shared BERT
is trained once into a temporary cache for the whole session, as a learner's first notebook would.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
APPS = sorted((Path(__file__).parent.parent / "notebooks").glob("playground*.ipynb"))
# Binder caps a whole session at "2G" = 2,000,000,000 bytes (Kubernetes units, not GiB), the Jupyter server
# included: each notebook's kernel, the demo and the app keep to 1.5 GB, which leaves the server room.
RSS_LIMIT_BYTES = 1_500_000_000


def kernel_memory(pid: int) -> tuple[int, int]:
    """(resident now, peak so far) of a kernel process, in bytes, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM"))


@dataclass
class MemoryLog:
    """The kernel's peak RSS after each cell, so that a notebook over the limit names the cell to blame."""

    rows: list[tuple[int, int, int]] = field(default_factory=list)  # (cell index, RSS now, peak so far), bytes

    @property
    def peak(self) -> int:
        return max((hwm for _, _, hwm in self.rows), default=0)

    def biggest_growth(self) -> tuple[int, int]:
        """(cell index, bytes) of the cell that raised the peak the most."""
        growth, before = [], 0
        for index, _, hwm in self.rows:
            growth.append((index, hwm - before))
            before = hwm
        return max(growth, key=lambda g: g[1])


def execute(
    path: Path, *, env: dict[str, str], timeout: int = 600, more: tuple[str, ...] = ()
) -> tuple[nbformat.NotebookNode, MemoryLog]:
    """Run a notebook in a fresh kernel with `env`, and then the cells `more`; return it executed and the
    kernel's memory after each cell."""
    nb = nbformat.read(path, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in more]
    memory = MemoryLog()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.on_cell_executed = lambda cell, cell_index, **_: memory.rows.append(
        (cell_index, *kernel_memory(client.km.provisioner.pid))
    )
    try:
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, memory


def memory_verdict(name: str, nb: nbformat.NotebookNode, memory: MemoryLog) -> str:
    cell, grew = memory.biggest_growth()
    return (
        f"{name}'s kernel peaked at {memory.peak:,} bytes RSS, over the {RSS_LIMIT_BYTES:,} that leaves room on "
        f"Binder; cell {cell} raised the peak the most (+{grew:,} bytes):\n{nb.cells[cell].source[:300]}"
    )


@pytest.fixture(scope="session")
def course_env(tmp_path_factory, mirror_dir) -> dict[str, str]:
    return {
        "TEACHKIT_FAST": "1",
        "TEACHKIT_CACHE": str(tmp_path_factory.mktemp("course-cache")),
        "TEACHKIT_DATA_DIR": str(mirror_dir),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }


def test_the_course_has_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


def test_the_memory_log_names_the_cell_that_raised_the_peak_the_most():
    log = MemoryLog([(0, 300, 300), (2, 280, 350), (3, 700, 1_200), (5, 400, 1_200), (6, 900, 1_300)])
    assert log.peak == 1_300
    assert log.biggest_growth() == (3, 850)  # not cell 6, the largest RSS: the peak grew most in cell 3


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (make strip) before committing"


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_the_first_cell_names_the_teachkit_files_it_teaches(path):
    first = "".join(json.loads(path.read_text())["cells"][0]["source"])
    named = re.findall(r"teachkit/([\w/]+)\.py", first)  # a lesson file, or one in a sub-package
    package = Path(__file__).parent.parent / "teachkit"
    assert named, f"{path.name}: say in the first cell which teachkit file(s) it teaches"
    assert all((package / f"{name}.py").is_file() for name in named), named


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_within_binder_memory(path, course_env):
    t0 = time.perf_counter()
    nb, memory = execute(path, env=course_env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # What fast mode prints about its own numbers agrees with them (the same run, not a second one).
    assert claim_problems(path.name, printed_text(nb)) == []
    assert giveaways(path.name, nb) == []
    cell, grew = memory.biggest_growth()
    print(
        f"{path.name}: {time.perf_counter() - t0:.0f} s, peak RSS {memory.peak:,} bytes; "
        f"cell {cell} raised the peak the most (+{grew:,} bytes)"
    )
    assert memory.peak <= RSS_LIMIT_BYTES, memory_verdict(path.name, nb, memory)


# One run at the app's default settings (the playground reads no fast mode), as a learner's first click.
APP_RUN = (
    "assert app.run(), app.status.value\n"
    "assert app.wait(timeout=900), 'the run did not end'\n"
    "assert app.runs[-1].status == 'finished', app.runs[-1].message"
)


@pytest.mark.slow
@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_the_app_after_a_run_at_default_settings_stays_within_binder_memory(path, course_env):
    nb, memory = execute(path, env=course_env, timeout=900, more=(APP_RUN,))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name} after a run: peak RSS {memory.peak:,} bytes")
    assert memory.peak <= RSS_LIMIT_BYTES, memory_verdict(path.name, nb, memory)


# --------------------------------------------------------------------------- numbers in the prose

# A number in a notebook's prose is either a fixed fact or printed by the run itself. Fixed facts: settings
# and their defaults, published facts about other models and data, years and sections of papers, exercise
# data, and how long a notebook takes. Each notebook lists its own; anything else must come from a cell.
FIXED_FACTS = {
    "00_start_here.ipynb": {
        "15%",  # BERT's mask rate
        "3.10",  # the Python version the course needs
        "5,000",
        "2,000",
    },  # made-up datasets of exercise 1
    "01_tokens.ipynb": {
        "30,522",  # the original BERT's vocabulary (MiniLM's)
        "256",
    },  # the bytes a byte-level tokenizer starts from
    "02_masked_language_modelling.ipynb": {
        "15%",
        "80%",
        "10%",
        "0.8",
        "0.9",  # the masking rule's constants
        "0.5",  # a mask rate to try (and 0.9)
        "1,000",  # exercise 1's text length
        "2019",
        "3.1",
    },  # the BERT paper and its section
    "03_next_sentence_prediction.ipynb": {
        "50%",  # chance on a balanced yes/no question
        "2019",
    },  # RoBERTa's year
    "04_causal_language_modelling.ipynb": {
        "1,024",  # the vocabulary size set in the code (1024)
        "6.9",  # ln(1024), the loss of a uniform guess
        "15%",
    },  # BERT's mask rate
    "05_attention.ipynb": {
        "1 minute",  # how long the notebook takes
        "2019",  # Clark et al.
        "1.0",
    },  # the highest head score, by definition
    "06_pretraining.ipynb": {
        "15%",  # BERT's mask rate
        "5 minutes",  # the default PRETRAIN_SECONDS (300)
        "6 minutes",  # how long the notebook takes
        "128",
        "768",  # the widths of our BERT and of BERT-base
        "0.0%",  # how a probability of 1 in thousands prints with one decimal
        "40%",  # the course BERT's recorded mask rate, and a rate to try
        "2019",
        "2023",  # RoBERTa, Wettig et al.
        "4 days",
        "3.3",
    },  # BERT-base's pre-training (the paper)
    "07_finetuning_for_sentiment.ipynb": {
        "1,000",  # the default MAIN_BUDGET, and a budget to try
        "100",  # a budget to try
        "10 minutes",  # how long the notebook takes
        "8,530",
        "1,066",  # Rotten Tomatoes' split sizes
        "384",
    },  # MiniLM's width
}
NUMBER = re.compile(
    r"\d+(?:\.\d+)?\s?%"  # percentages: 15%, 0.0%
    r"|\d+(?:\.\d+)?\s(?:minutes?|seconds?|hours?|days?)\b"  # durations: 3 minutes
    r"|\d+\.\d+|\d{1,3}(?:,\d{3})+|\d{3,}"
)  # decimals, 8,192, 2019


def quoted_numbers(notebook: Path) -> list[str]:
    """The numbers a notebook's prose quotes, outside code spans and model names."""
    cells = json.loads(notebook.read_text())["cells"]
    prose = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    prose = re.sub(r"`[^`]*`|\b[\w/-]*L-\d+_H-\d+_A-\d+\b", "", prose)  # code and model names are not claims
    return [m.group(0) for m in NUMBER.finditer(re.sub(r"\s+", " ", prose))]


def unexplained_numbers(notebook: Path) -> set[str]:
    """Quoted numbers that are neither a fixed fact of that notebook nor written in one of its code cells."""
    cells = json.loads(notebook.read_text())["cells"]
    code = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    facts = FIXED_FACTS.get(notebook.name, set())
    return {n for n in quoted_numbers(notebook) if n not in facts and n not in code}


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: p.name)
def test_prose_quotes_no_result_its_own_run_does_not_print(path):
    """05 once said the course BERT was "pre-trained for 3 minutes" (it trained for 100) and 06 "about 1 in
    8,000" (fast mode has 2,048 tokens): true of one run, false of another. Results are printed by cells now."""
    assert unexplained_numbers(path) == set(), (
        f"{path.name} quotes these numbers in its text: print them from the run, or list them in "
        "FIXED_FACTS if they are settings or facts that no run changes"
    )


def test_every_fixed_fact_is_still_quoted():
    """A fact the prose no longer quotes is taken off the list, so the list cannot hide a new result."""
    stale = {name: facts - set(quoted_numbers(Path(NOTEBOOKS[0].parent / name))) for name, facts in FIXED_FACTS.items()}
    assert not any(stale.values()), stale


# --------------------------------------------------------------------------- claims the run prints


def _near(a: float, b: float, *, by: float) -> bool:
    return abs(a - b) <= by + 1e-9


def coin_claims(text: str) -> dict[str, str | None]:
    """03: "right on R of N pairs (P%; ...): no better than | better than | worse than a coin, since ..."."""
    found = {}
    for m in re.finditer(
        r"right on (\d+) of (\d+) pairs \((\d+)%; chance is 50%\): (no better|better|worse) than "
        r"a coin, since a coin lands within (\d+)% of 50%",
        text,
    ):
        right, n, shown, said = int(m[1]), int(m[2]), int(m[3]), m[4]
        luck = 2 * (0.25 / n) ** 0.5
        truth = "no better" if abs(right / n - 0.5) <= luck else "better" if right > n / 2 else "worse"
        wrong = said != truth or not _near(100 * right / n, shown, by=0.5) or not _near(100 * luck, int(m[5]), by=0.5)
        found[m[0]] = f"{right} of {n} is {truth} than a coin" if wrong else None
    return found


def gain_claims(text: str) -> dict[str, str | None]:
    """07: "beat | lost to | tied with scratch by G points (...: A% vs B% test accuracy)" and
    "reached A%; the same network with random weights reached B%: pre-training is worth G points"."""
    found = {}
    for m in re.finditer(
        r"(beat|lost to|tied with) scratch(?: by ([\d.]+) points)? \((?:mean of \d+ paired seeds|one seed): "
        r"([\d.]+)% vs ([\d.]+)% test accuracy\)",
        text,
    ):
        sign = {"beat": 1, "lost to": -1, "tied with": 0}[m[1]]
        gain, ours, scratch = sign * float(m[2] or 0), float(m[3]), float(m[4])
        wrong = sign * (ours - scratch) < -0.1 or not _near(gain, ours - scratch, by=0.15)
        found[m[0]] = f"the accuracies differ by {ours - scratch:+.1f} points" if wrong else None
    for m in re.finditer(
        r"reached ([\d.]+)%; the same network with random weights reached ([\d.]+)%: "
        r"pre-training is worth (-?[\d.]+) points",
        text,
    ):
        gap = float(m[1]) - float(m[2])
        found[m[0]] = None if _near(float(m[3]), gap, by=0.15) else f"the accuracies differ by {gap:+.1f} points"
    return found


# The notebooks that print a claim about their own numbers, and the check each claim must pass.
CLAIMS = {"03_next_sentence_prediction.ipynb": coin_claims, "07_finetuning_for_sentiment.ipynb": gain_claims}


def printed_text(nb, *, cells=None) -> str:
    """Everything a run printed or displayed as text (streams, plain text, Markdown, HTML), in `cells` or all."""
    parts = []
    for cell in nb.cells if cells is None else cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            parts += [
                out.get("text", ""),
                *(data.get(kind, "") for kind in ("text/plain", "text/markdown", "text/html")),
            ]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


# An exercise's answer must not be printed before the learner writes it: (the answer cell's start, what
# would give it away in the outputs above it).
ANSWERS = {
    "05_attention.ipynb": ("answer_1 =", re.compile(r">previous<|\bprevious\b[^\n]*\(layer \d+, head \d+\)")),
}


def giveaways(name: str, nb) -> list[str]:
    """What the outputs above an exercise's answer cell show of its answer."""
    if name not in ANSWERS:
        return []
    start, answer = ANSWERS[name]
    cells = list(nb.cells)
    above = cells[: next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith(start))]
    return answer.findall(printed_text(nb, cells=above))


def test_an_output_that_gives_an_exercise_away_is_caught():
    def cell(source, html=""):
        outputs = [nbformat.v4.new_output("display_data", data={"text/html": html})] if html else []
        return nbformat.v4.new_code_cell(source, outputs=outputs)

    table = "<tr><td>previous</td><td>1.00 (layer 1, head 3)</td></tr>"
    shown = nbformat.v4.new_notebook(cells=[cell("viz.html_table(...)", table), cell("answer_1 = None")])
    hidden = nbformat.v4.new_notebook(cells=[cell("answer_1 = None"), cell("viz.html_table(...)", table)])
    assert giveaways("05_attention.ipynb", shown) == [">previous<"]
    assert giveaways("05_attention.ipynb", hidden) == []


def claim_problems(name: str, text: str) -> list[str]:
    """The claims a run printed that its own numbers contradict, or a note that it printed none."""
    if name not in CLAIMS:
        return []
    found = CLAIMS[name](text)
    if not found:
        return [f"{name} printed no verdict on its own numbers ({CLAIMS[name].__doc__.strip()})"]
    return [f"{claim!r}: {why}" for claim, why in found.items() if why]


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "our model is right on 21 of 40 pairs (52%; chance is 50%): no better than a coin, since a coin lands "
            "within 16% of 50% on 40 pairs 95 times in 100.",
            None,
        ),
        (
            "our model is right on 30 of 40 pairs (75%; chance is 50%): no better than a coin, since a coin lands "
            "within 16% of 50% on 40 pairs 95 times in 100.",
            "30 of 40 is better than a coin",
        ),
        (
            "our model is right on 120 of 200 pairs (60%; chance is 50%): better than a coin, since a coin lands "
            "within 7% of 50% on 200 pairs 95 times in 100.",
            None,
        ),
        ("our model is right on 21 of 40 pairs (52%; chance is 50%): no better than a coin", "printed no verdict"),
    ],
)
def test_a_coin_claim_that_its_numbers_contradict_is_caught(text, problem):
    found = claim_problems("03_next_sentence_prediction.ipynb", text)
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "- **course BERT** (119.6M tokens of pre-training) beat scratch by 4.5 points (one seed: "
            "60.0% vs 55.5% test accuracy).",
            None,
        ),
        (
            "- **course BERT** (119.6M tokens of pre-training) beat scratch by 4.5 points (one seed: "
            "50.0% vs 54.5% test accuracy).",
            "differ by -4.5 points",
        ),  # says it helped; the numbers say it did not
        (
            "- **course BERT** (119.6M tokens of pre-training) lost to scratch by 0.5 points (one seed: "
            "49.5% vs 50.0% test accuracy).",
            None,
        ),
        (
            "- **MiniLM**, pre-trained by others on billions of words, reached 52.0%; the same network with random "
            "weights reached 55.0%: pre-training is worth 3.0 points to it.",
            "differ by -3.0 points",
        ),
        ("- *Fast mode (CI): tiny budgets and evaluation sets, so these numbers say little.*", "printed no verdict"),
    ],
)
def test_a_gain_claim_that_its_numbers_contradict_is_caught(text, problem):
    found = claim_problems("07_finetuning_for_sentiment.ipynb", text)
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


def test_notebook_02_picks_a_masking_draw_that_shows_all_three_roles():
    """Before: `seed=14  # a draw that shows all three roles` printed '6 [MASK], 0 random, 1 kept'; a fixed
    seed stops showing what the prose promises whenever PyTorch's generator changes. The cell must search."""
    from teachkit import course
    from teachkit.course import textviz
    from teachkit.course.probes import mask_sentence

    nb = nbformat.read(NOTEBOOKS[0].parent / "02_masked_language_modelling.ipynb", as_version=4)
    (cell,) = [c.source for c in nb.cells if c.cell_type == "code" and "masking_html(masked" in c.source]
    _, tok = course.load_course_bert()
    shown = {"tok": tok, "mask_sentence": mask_sentence, "textviz": textviz, "HTML": str, "print": lambda *a: None}
    exec(cell, shown)
    assert {"masked", "random", "kept"} <= set(shown["masked"].roles), shown["masked"].roles
