"""The layout shows the architecture: front ends are a package, nothing outside it
branches on a front end's kind or takes constants from a particular front end."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRONT_END_MODULES = ("seed", "embedding")
FRONT_END_CLASSES = ("SeedFrontEnd", "EmbeddingFrontEnd", "EmbeddingRowsFrontEnd", "MelFrontEnd")
FRONT_END_NAMES = ("seed-logmel-v1", "oww-embedding-v1", "oww-embedding-rows-v1", "oww-mel-v1")


def sources():
    for folder in ("kws_stream", "train", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "frontends" not in path.parts:
                yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_front_ends_are_a_package():
    pkg = ROOT / "kws_stream" / "frontends"
    assert {p.stem for p in pkg.glob("*.py")} >= {"__init__", "base", *FRONT_END_MODULES}
    assert not (ROOT / "kws_stream" / "frontend.py").exists() and not (ROOT / "kws_stream" / "embedding.py").exists()


def test_no_module_imports_constants_from_a_front_end():
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in FRONT_END_MODULES:
                constants = [a.name for a in node.names if a.name.isupper()]
                assert not constants, f"{path.relative_to(ROOT)}:{node.lineno} imports {constants} from a front end"


def test_nothing_outside_frontends_branches_on_a_front_end_kind():
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
                        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                literals = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                assert not names & set(FRONT_END_CLASSES) and not literals & set(FRONT_END_NAMES), \
                    f"{path.relative_to(ROOT)}:{node.lineno} compares with a front end"


def test_the_train_folder_is_installed_as_kws_train():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"kws_train" = "train"' in text and '"train"]' not in text
