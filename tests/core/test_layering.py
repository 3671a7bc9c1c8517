"""The layering the code map promises, read from the source (ast), not hoped for:
Megatron only inside megatron_zppo/train/; the method's maths free of Megatron, process groups,
HTTP clients and model libraries; the loop free of method names."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_zppo"
# The method's maths (core/) and the two pure modules of the config: tested in milliseconds (STYLE.md habit 3).
PURE = sorted(str(p.relative_to(PACKAGE).with_suffix("")) for p in (PACKAGE / "core").glob("*.py")) + [
    "config_io", "errors"]
HEAVY = ("megatron", "torch.distributed", "httpx", "requests", "transformers", "sglang")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _hits(names: set[str], roots) -> list[str]:
    return sorted(n for n in names for r in roots if n == r or n.startswith(r + "."))


def test_only_the_train_package_imports_megatron():
    outside = {str(p.relative_to(PACKAGE)): _hits(_imports(p), ["megatron"])
               for p in PACKAGE.rglob("*.py") if "train" not in p.relative_to(PACKAGE).parts}
    assert len(outside) > 30
    assert {k: v for k, v in outside.items() if v} == {}


@pytest.mark.parametrize("module", PURE)
def test_the_methods_maths_imports_no_megatron_process_group_or_client(module):
    assert _hits(_imports(PACKAGE / f"{module}.py"), HEAVY) == []


def test_the_core_folder_holds_the_methods_maths_and_imports_only_itself():
    core = {p.stem for p in (PACKAGE / "core").glob("*.py")} - {"__init__"}
    assert {"records", "answers", "prompts", "reformulate", "replay_buffer", "advantages", "loss", "batch",
            "baselines"} <= core
    ours = {f: {n for n in _imports(PACKAGE / "core" / f"{f}.py") if n.startswith("megatron_zppo")} for f in core}
    # images, videos: the vision-token count a prompt's length limit needs (media in, a number out).
    outside = {f: sorted(n for n in names if not n.startswith(("megatron_zppo.core", "megatron_zppo.config_io",
                                                                 "megatron_zppo.errors", "megatron_zppo.images",
                                                                 "megatron_zppo.videos")))
               for f, names in ours.items()}
    assert {f: v for f, v in outside.items() if v} == {}


def test_the_loop_names_no_method():
    from megatron_zppo.config import METHODS, PRESETS

    tree = ast.parse((PACKAGE / "loop.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = (set(PRESETS) | set(METHODS)) - {"zppo"}  # "zppo" is also the project
    assert strings & names == set()
    one_method = {f"megatron_zppo.methods.{p.stem}" for p in (PACKAGE / "methods").glob("*.py")} - {
        "megatron_zppo.methods.__init__", "megatron_zppo.methods.base"}
    assert one_method and _imports(PACKAGE / "loop.py") & one_method == set()
    assert "cfg" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}  # no root config either


def test_the_train_package_never_sees_the_root_config():
    # config.py holds train/'s small configs (precision, optimizer); the arrow must not also run back.
    users = {str(p.relative_to(PACKAGE)) for p in (PACKAGE / "train").glob("*.py")
             if _hits(_imports(p), ["megatron_zppo.config"])}
    assert users == set()


def test_every_cpu_shim_in_cpu_compats_table_exists_where_it_says():
    import re

    doc = ast.get_docstring(ast.parse((PACKAGE / "train" / "cpu_compat.py").read_text()))
    rows = [r for r in doc.splitlines() if r.startswith("| ") and "``" in r.split("|")[2]]
    listed = [(("cpu_compat.py" if w.strip() == "here" else w.strip().strip("`")), n)
              for w, shims, _ in (r.strip("|").split("|") for r in rows) for n in re.findall(r"``(\w+)``", shims)]
    assert len(listed) >= 10
    defined = {f: {n.name for n in ast.parse((PACKAGE / "train" / f).read_text()).body
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))} for f, _ in listed}
    assert [(f, n) for f, n in listed if n not in defined[f]] == []


ROOT = PACKAGE.parent
MAIN_PATH = [ROOT / "pretrain_zppo.py", *sorted(PACKAGE.rglob("*.py"))]


def _method_names() -> set[str]:
    from megatron_zppo.config import METHODS, PRESETS

    return (set(PRESETS) | set(METHODS)) - {"zppo"}  # "zppo" is also the project


def _function(path: Path, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef) and n.name == name)


def test_the_driver_and_the_trainer_name_no_method():
    # A new method is one module in methods/ and one preset: nothing here changes for it.
    for path in (ROOT / "pretrain_zppo.py", PACKAGE / "sources.py", PACKAGE / "report.py",
                 PACKAGE / "train" / "rl_trainer.py"):
        strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert strings & _method_names() == set(), path.name
    trainer = next(n for n in ast.parse((PACKAGE / "train" / "rl_trainer.py").read_text()).body
                   if isinstance(n, ast.ClassDef) and n.name == "RLTrainer")
    public = {n.name for n in trainer.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    assert public == {"update", "export_hf", "save", "load", "close", "is_main"}  # one seam, no method per objective


def test_the_drivers_loop_fits_on_a_screen_and_asks_no_rank_question():
    loop = _function(ROOT / "pretrain_zppo.py", "train")
    assert loop.end_lineno - loop.lineno + 1 <= 40
    assert "is_main" not in ast.unparse(loop)  # ranks without engines get null objects (sources.py, report.py)


def test_no_file_on_the_main_path_is_over_400_lines_and_no_function_over_60():
    long_files = {p.name: n for p in MAIN_PATH if (n := len(p.read_text().splitlines())) > 400}
    long_functions = {f"{p.name}:{n.name}": n.end_lineno - n.lineno + 1 for p in MAIN_PATH
                      for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60}
    assert len(MAIN_PATH) > 60 and long_files == {} and long_functions == {}
