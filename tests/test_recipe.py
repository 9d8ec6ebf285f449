"""The course BERT's recipe is written once, in teachkit/config.py (`COURSE_RECIPE`), and read everywhere.

Two kinds of test: the places that use the recipe (the demo, the command line, the fair protocol, the
NSP BERT, the playground, notebooks 06 and 07, the shipped course BERT) give its values; and a scanner
finds a second copy of its numbers there: a keyword argument, dict key, assignment, parameter default or
command-line option named like a recipe field whose value is a literal equal to that field's value.

The scanner reads the course's own layers (teachkit/experiments, course, app), the notebooks that
pre-train and fine-tune the course BERT (06, 07) and the benchmarks. The lesson files and the machinery
are a library: `train_wordpiece(vocab_size=8192)` or TrainConfig's `warmup=0.1` are its defaults for any
model, not copies of the course's recipe; nor are notebook 01's tokenizer or notebook 04's GPT.
"""

from __future__ import annotations

import ast
import json
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace

from teachkit.config import COURSE_RECIPE, CourseRecipe

ROOT = Path(__file__).resolve().parents[1]
R = COURSE_RECIPE

SCANNED = [
    "teachkit/experiments/*.py",
    "teachkit/course/*.py",
    "teachkit/app/*.py",
    "benchmarks/*.py",
    "notebooks/06_pretraining.ipynb",
    "notebooks/07_finetuning_for_sentiment.ipynb",
]
# The recipe's numbers (and tuples of them); its words ("mean", "minilm", True) are checked by the tests below.
NUMBERS = [f.name for f in fields(CourseRecipe) if not isinstance(getattr(R, f.name), (bool, str))]
# The names a copy of a recipe number goes by (lower case, '-' read as '_') -> the fields it would copy.
# A name that is not here cannot be a copy: `lr=1e-3` in a smoke test is not the recipe's pre-training lr.
NAMES: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in NUMBERS},
    "n_layers": ("layers",),
    "d_model": ("width",),
    "n_heads": ("heads",),
    "d_ff": ("d_ff",),
    "mask_rate": ("mask_prob",),
    "lr": ("pretrain_lr",),
    "batch": ("pretrain_batch", "finetune_batch"),
    "batch_size": ("pretrain_batch",),
    "warmup": ("pretrain_warmup", "finetune_warmup"),
    "seconds": ("pretrain_seconds",),
    "default_seconds": ("pretrain_seconds",),
    "labels": ("budget",),
    "main_budget": ("budget",),
    "epochs": ("epochs_few",),
    "grad_accum": ("real_bert_grad_accum",),
    "grid": ("grid", "real_bert_grid"),
}

# Where a literal happens to equal a recipe number without being the recipe: (file, name, value) -> why.
UNRELATED: dict[tuple[str, str, object], str] = {
    ("benchmarks/throughput.py", "vocab_size", 8192): "BERT-Mini ('mini' preset) is the model it times",
    ("benchmarks/throughput.py", "n_heads", 4): "BERT-Mini ('mini' preset) is the model it times",
    ("benchmarks/throughput.py", "batch", 32): "its own timing batch, 32 x 128 tokens",
}
# Files whose numbers are a record of what was run, not a copy to keep in step.
RECORDS = {
    "benchmarks/lesson_sweep.py": "a sweep of pre-training settings around an earlier recipe (64-token rows, "
    "width // 64 heads), kept as it ran"
}


# --------------------------------------------------------------------------- the scanner


@dataclass(frozen=True)
class Copy:
    where: str  # "path:line"
    name: str
    value: object
    field: str

    def __str__(self) -> str:
        return f"{self.where}: {self.name}={self.value!r} is COURSE_RECIPE.{self.field}: read it from there"


def _literal(node: ast.AST | None):
    """The value of a literal expression (`course.budget(1000, fast=160)` counts as its default, 1000)."""
    if (
        isinstance(node, ast.Call)
        and node.args
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "budget"
    ):
        node = node.args[0]
    try:
        return _plain(ast.literal_eval(node)) if node is not None else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _same(value, wanted) -> bool:
    """Equal as a recipe value: numbers by value (2e-3 == 0.002, 5 == 5.0), never a bool for a number."""
    if isinstance(value, tuple) or isinstance(wanted, tuple):
        return (
            isinstance(value, tuple)
            and isinstance(wanted, tuple)
            and len(value) == len(wanted)
            and all(_same(v, w) for v, w in zip(value, wanted))
        )
    if isinstance(value, bool) or isinstance(wanted, bool):
        return type(value) is type(wanted) and value == wanted
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return value == wanted
    return isinstance(value, str) and value == wanted


def _named_values(tree: ast.AST):
    """(name, value node, line) for everything in `tree` that gives a named thing a value."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield from ((k.arg, k.value, k.value.lineno) for k in node.keywords if k.arg)
            option = node.args[0] if node.args and isinstance(node.args[0], ast.Constant) else None
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if getattr(node.func, "attr", "") == "add_argument" and option and str(option.value).startswith("--"):
                yield option.value.lstrip("-"), default, node.lineno
        elif isinstance(node, ast.Dict):
            yield from (
                (k.value, v, v.lineno)
                for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = zip(target.elts, node.value.elts)
                else:
                    pairs = [(target, node.value)]
                for t, v in pairs:
                    name = getattr(t, "id", getattr(t, "attr", None))
                    if name and v is not None:
                        yield name, v, node.lineno
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            pairs = [
                *zip(positional[len(positional) - len(a.defaults) :], a.defaults),
                *zip(a.kwonlyargs, a.kw_defaults),
            ]
            yield from ((arg.arg, d, d.lineno) for arg, d in pairs if d is not None)


def copies_in(source: str, *, where: str, recipe: CourseRecipe = R) -> list[Copy]:
    """Every copy of a recipe number in Python `source` (a file, or a notebook cell)."""
    found = []
    for name, node, line in _named_values(ast.parse(source)):
        key = str(name).lower().replace("-", "_")
        value = _literal(node)
        if value is None:
            continue
        for field in NAMES.get(key, ()):
            if _same(value, getattr(recipe, field)):
                found.append(Copy(f"{where}:{line}", str(name), value, field))
    return found


def notebook_code(path: Path) -> list[tuple[int, str]]:
    """(cell number, source) of each code cell; IPython's %magics and !shell lines are blanked (not Python)."""
    cells = json.loads(path.read_text())["cells"]
    return [
        (
            i,
            "".join(
                "\n" if line.lstrip().startswith(("%", "!")) else line
                for line in "".join(c["source"]).splitlines(keepends=True)
            ),
        )
        for i, c in enumerate(cells)
        if c["cell_type"] == "code"
    ]


def scanned_files() -> list[Path]:
    files = {path for pattern in SCANNED for path in ROOT.glob(pattern)}
    return sorted(p for p in files if p.relative_to(ROOT).as_posix() not in RECORDS)


def all_copies() -> list[Copy]:
    found = []
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix == ".ipynb":
            for cell, source in notebook_code(path):
                found += copies_in(source, where=f"{rel} cell {cell}")
        else:
            found += copies_in(path.read_text(), where=rel)
    return found


def _unrelated_key(copy: Copy) -> tuple[str, str, object]:
    """(file, name, value): the key of UNRELATED."""
    return copy.where.split(":")[0].split(" cell ")[0], copy.name, copy.value


def test_the_recipe_is_written_once():
    found = [c for c in all_copies() if _unrelated_key(c) not in UNRELATED]
    assert not found, "A second copy of the course recipe's numbers:\n" + "\n".join(map(str, found))


def test_every_unrelated_coincidence_is_still_there():
    """An entry of UNRELATED that matches nothing is taken off, so the list cannot hide a new copy."""
    seen = {_unrelated_key(c) for c in all_copies()}
    assert set(UNRELATED) <= seen, set(UNRELATED) - seen
    assert all((ROOT / path).is_file() for path in RECORDS)


COPIES = """
settings = DemoSettings(layers=2, width=128)
recipe = {"mask_prob": 0.4, "grid": [[1e-3, 1.0], [3e-4, 0.3]]}
BATCH, LR = 64, 2e-3
PRETRAIN_SECONDS = course.budget(300, fast=15)
config = TrainConfig(max_steps=10, warmup=0.05)

@dataclass
class Protocol:
    grid: tuple = ((1e-3, 1.0), (3e-4, 0.3))
    finetune_len: int = 64

def build(*, heads: int = 4, vocab_size=8192):
    parser.add_argument("--mask-prob", type=float, default=0.4)
"""
NOT_COPIES = """
settings = DemoSettings(layers=COURSE_RECIPE.layers, width=64, mask_prob=0.15, nsp=True)
config = TrainConfig(max_steps=20, batch_size=16, lr=1e-3, warmup=0.0)  # a smoke test's own numbers
cfg = course_bert_config(vocab_size=tok.get_vocab_size(), max_len=64)  # 64-token sentence pairs
parser.add_argument("--lr", type=float, default=COURSE_RECIPE.pretrain_lr)
parser.add_argument("--steps", type=int, default=20)
steps = 128
accumulate = True
"""


def test_the_scanner_finds_a_copy_in_every_form():
    found = {(c.name, c.field) for c in copies_in(COPIES, where="example.py")}
    assert found == {
        ("layers", "layers"),
        ("width", "width"),
        ("mask_prob", "mask_prob"),
        ("grid", "grid"),
        ("BATCH", "pretrain_batch"),
        ("LR", "pretrain_lr"),
        ("PRETRAIN_SECONDS", "pretrain_seconds"),
        ("warmup", "pretrain_warmup"),
        ("finetune_len", "finetune_len"),
        ("heads", "heads"),
        ("vocab_size", "vocab_size"),
        ("mask-prob", "mask_prob"),
    }
    assert len(copies_in(COPIES, where="example.py")) == 13  # grid twice: the dict key and the class field


def test_the_scanner_lets_other_numbers_be():
    assert copies_in(NOT_COPIES, where="example.py") == []


def test_the_scanner_reads_notebook_cells(tmp_path):
    cell = {
        "cell_type": "code",
        "id": "a",
        "metadata": {},
        "outputs": [],
        "execution_count": None,
        "source": ["%matplotlib inline\n", "small = compare.Protocol(grid=((3e-4, 0.3),), grad_accum=3)\n"],
    }
    notebook = tmp_path / "07.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["lr = 2e-3"]}, cell]}))
    found = [c for i, source in notebook_code(notebook) for c in copies_in(source, where=f"07 cell {i}")]
    assert [(c.where, c.name, c.field) for c in found] == [("07 cell 1:2", "grid", "real_bert_grid")]


def test_a_changed_recipe_moves_what_counts_as_a_copy():
    """The scanner compares with the recipe's values, not with numbers of its own."""
    other = CourseRecipe(layers=3)
    assert copies_in("f(layers=3)", where="x", recipe=other) and not copies_in("f(layers=2)", where="x", recipe=other)


# --------------------------------------------------------------------------- the readers give the recipe's values


def test_the_shipped_course_bert_is_the_recipe():
    """The course BERT (config.json, training.json and its command) is the truth the recipe was read from."""
    from teachkit.course import course_bert, course_bert_info
    from teachkit.experiments.cli import build_parser
    from teachkit.machinery.checkpoint import model_config

    cfg, info = model_config(course_bert()), course_bert_info()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.max_len, cfg.vocab_size) == (
        R.layers,
        R.width,
        R.heads,
        R.d_ff,
        R.max_len,
        R.vocab_size,
    )
    assert (cfg.norm_first, cfg.dropout, cfg.attn_dropout) == (R.norm_first, R.dropout, R.dropout)
    assert (tuple(info["corpus"]), info["mask_prob"], info["batch_size"], info["lr"]) == (
        R.corpus,
        R.mask_prob,
        R.pretrain_batch,
        R.pretrain_lr,
    )
    command = build_parser().parse_args(shlex.split(info["command"])[1:])
    assert (command.layers, command.width, command.heads, command.vocab_size, command.max_len, command.batch) == (
        R.layers,
        R.width,
        R.heads,
        R.vocab_size,
        R.max_len,
        R.pretrain_batch,
    )


def test_the_demo_runs_the_recipe():
    from teachkit.experiments.compare import Protocol
    from teachkit.experiments.pretraining import DemoSettings

    demo = asdict(DemoSettings())
    shared = set(demo) & {f.name for f in fields(CourseRecipe)}
    assert len(shared) == 19 and all(demo[name] == getattr(R, name) for name in shared), shared
    small, big = DemoSettings().protocol(real_bert=False), DemoSettings().protocol(real_bert=True)
    assert small == Protocol() and (small.grid, small.max_len, small.grad_accum) == (R.grid, R.finetune_len, 1)
    assert (big.grid, big.max_len, big.grad_accum) == (R.real_bert_grid, R.finetune_len, R.real_bert_grad_accum)
    assert (
        Protocol().batch,
        Protocol().warmup,
        Protocol().epochs(1000),
        Protocol().epochs(2001),
        Protocol().pooling,
        Protocol().dropout,
    ) == (R.finetune_batch, R.finetune_warmup, R.epochs_few, R.epochs_many, R.pooling, R.finetune_dropout)


def test_the_command_lines_defaults_are_the_recipe():
    from teachkit.experiments import cli

    pre = cli.build_parser().parse_args(["pretrain"])
    assert (
        tuple(pre.corpus),
        pre.layers,
        pre.width,
        pre.heads,
        pre.max_len,
        pre.vocab_size,
        pre.lr,
        pre.mask_prob,
        pre.batch,
        cli.DEFAULT_SECONDS,
    ) == (
        R.corpus,
        R.layers,
        R.width,
        R.heads,
        R.max_len,
        R.vocab_size,
        R.pretrain_lr,
        R.mask_prob,
        R.pretrain_batch,
        R.pretrain_seconds,
    )
    fin = cli.build_parser().parse_args(["finetune", "--from", "minilm"])
    assert ((fin.lr, fin.body_lr_scale), fin.pooling, fin.dataset) == (R.grid[0], R.pooling, R.sentiment)
    assert cli._finetune_max_len(fin) == R.finetune_len  # minilm is not a checkpoint folder: the recipe's length


def test_the_nsp_bert_and_the_playground_start_from_the_recipe():
    from teachkit import course
    from teachkit.app import playground

    nsp = course.nsp_bert_settings()
    if not course.FAST:
        assert (nsp.layers, nsp.width, nsp.heads) == (R.layers, R.width, R.heads)
    assert (nsp.mask_prob, nsp.pretrain_lr, nsp.pretrain_batch, nsp.nsp) == (
        R.mask_prob,
        R.pretrain_lr,
        R.pretrain_batch,
        True,
    )
    s = playground.Settings()
    assert (s.start_from, s.lr, s.batch_size, s.labels, s.epochs, playground.MAX_LEN) == (
        "course BERT",
        R.grid[0][0],
        R.finetune_batch,
        R.budget,
        R.epochs_few,
        R.finetune_len,
    )
    cfg = s.model_config(vocab_size=99)
    assert (cfg.dropout, cfg.pooling, cfg.norm_first, cfg.d_ff) == (
        R.finetune_dropout,
        R.pooling,
        R.norm_first,
        R.ff_multiple * s.width,
    )


def notebook_values(name: str, *names: str, **namespace) -> dict:
    """The values notebook `name` gives `names` in its code cells (each assignment's expression evaluated at
    default settings, not fast mode), with `namespace` for what the expressions use."""
    budget = SimpleNamespace(budget=lambda default, *, fast: default)
    scope = {"COURSE_RECIPE": R, "course": budget, **namespace}
    values = {}
    for _, source in notebook_code(ROOT / "notebooks" / name):
        for node in ast.parse(source).body:
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target = node.targets[0]
            wanted = [t.id for t in getattr(target, "elts", [target]) if getattr(t, "id", None) in names]
            if wanted:
                value = eval(compile(ast.Expression(node.value), name, "eval"), scope)  # our own notebook's code
                value = value if isinstance(target, ast.Tuple) else (value,)
                names_in_order = [t.id for t in getattr(target, "elts", [target])]
                values.update({n: v for n, v in zip(names_in_order, value) if n in names})
    missing = set(names) - set(values)
    assert not missing, f"{name} no longer assigns {missing}: update this test with what it reads instead"
    return values


def test_notebook_06_pre_trains_with_the_recipe():
    v = notebook_values("06_pretraining.ipynb", "PRETRAIN_SECONDS", "VOCAB_SIZE", "BATCH", "LR")
    assert (v["PRETRAIN_SECONDS"], v["VOCAB_SIZE"], v["BATCH"], v["LR"]) == (
        R.pretrain_seconds,
        R.vocab_size,
        R.pretrain_batch,
        R.pretrain_lr,
    )


def test_notebook_07_fine_tunes_with_the_demos_protocol():
    from teachkit.experiments import compare
    from teachkit.experiments.pretraining import DemoSettings

    v = notebook_values(
        "07_finetuning_for_sentiment.ipynb", "MAIN_BUDGET", "SEEDS", "BATCH", "LR", "small", "big", compare=compare
    )
    assert (v["MAIN_BUDGET"], v["SEEDS"], v["BATCH"], v["LR"]) == (R.budget, R.seeds, R.finetune_batch, R.grid[0][0])
    demo = DemoSettings()
    assert v["small"] == demo.protocol(real_bert=False) and v["big"] == demo.protocol(real_bert=True)


def test_every_field_of_the_recipe_has_a_comment():
    """A comment per field (on its line or the line above) says why the number is what it is."""
    source = (ROOT / "teachkit" / "config.py").read_text()
    lines = source.splitlines()
    recipe = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "CourseRecipe")
    rows = {n.target.id: n.lineno for n in recipe.body if isinstance(n, ast.AnnAssign)}
    assert set(rows) == {f.name for f in fields(CourseRecipe)}
    bare = [
        name
        for name, row in rows.items()
        if "  # " not in lines[row - 1] and not lines[row - 2].lstrip().startswith("# ")
    ]
    assert not bare, f"fields of CourseRecipe without a comment: {bare}"
