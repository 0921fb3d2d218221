"""The commands in README.md and docs/ run as written.

Every ``python -m monai.bundle run`` / ``torchrun ... monai.bundle run`` command is checked against the
configs it names (files exist, every ``--key`` override is a key of the merged config), and every
``python -m scripts.*`` / ``benchmarks.*`` command against the parameters of the function its module hands
to ``fire``. The synthetic-data trial of docs/training.md, which needs no download, is run for real.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.bundle import BUNDLE_ROOT

DOCUMENTS = [BUNDLE_ROOT / "README.md", *sorted((BUNDLE_ROOT / "docs").glob("*.md"))]
#: Options of ``monai.bundle run`` itself (not config keys).
RUN_OPTIONS = {"config_file", "meta_file", "logging_file", "args_file", "run_id", "init_id", "final_id", "tracking"}


def shell_blocks(path: Path) -> list[str]:
    """The fenced ``bash`` blocks of a Markdown file."""
    return re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The commands of a block as argument lists: continuations joined, comments dropped, variables of the
    block expanded, ``&&`` chains split."""
    text = re.sub(r"\\\n\s*", " ", block)
    variables: dict[str, str] = {}
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if assignment:
            variables[assignment.group(1)] = shlex.split(assignment.group(2))[0]
            continue
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                found.append(words)
    return found


def _options(words: list[str]) -> dict[str, str | None]:
    options = {}
    for index, word in enumerate(words):
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            options[key] = value or (words[index + 1] if index + 1 < len(words) else None)
    return options


def _entry_point(module: str) -> ast.Module:
    """The parsed source of a command's module.

    Raises:
        AssertionError: the module does not exist or has no ``fire`` entry point.
    """
    path = BUNDLE_ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"module {module} does not exist"
    text = path.read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":' in text and "fire.Fire(" in text, f"{module} has no fire entry point"
    return ast.parse(text)


def _wrapped_name(function: ast.FunctionDef) -> str | None:
    """The function named by a ``@functools.wraps(name, ...)`` decorator: fire shows (and takes) its arguments."""
    for decorator in function.decorator_list:
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "wraps"
            and isinstance(decorator.args[0], ast.Name)
        ):
            return decorator.args[0].id
    return None


def _fire_parameters(module: str) -> set[str] | None:
    """Parameter names accepted by the function(s) a module passes to ``fire.Fire`` (None: any)."""
    tree = _entry_point(module)
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Fire"
    ]
    target = calls[0].args[0]
    names = [v.id for v in target.values] if isinstance(target, ast.Dict) else [target.id]
    parameters: set[str] = set()
    for name in names:
        function = functions[name]
        while _wrapped_name(function) in functions:
            function = functions[_wrapped_name(function)]
        arguments = function.args
        if arguments.kwarg is not None:
            return None
        parameters |= {a.arg for a in arguments.args + arguments.kwonlyargs}
    return parameters


def _check_bundle_run(words: list[str], where: str) -> None:
    from monai.bundle import ConfigParser

    options = _options(words[words.index("run") + 1 :])
    files = (
        ast.literal_eval(options["config_file"]) if options["config_file"].startswith("[") else [options["config_file"]]
    )
    assert len(files) <= 3, f"{where}: {len(files)} config files; a workflow is one config and at most two overlays"
    for name in files:
        assert (BUNDLE_ROOT / name).is_file(), f"{where}: config file {name} does not exist"
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / name) for name in files])
    for key in options:
        if key not in RUN_OPTIONS:
            assert key in parser, f"{where}: --{key} is not a key of {files}"


def _check_python_module(module: str, words: list[str], where: str) -> None:
    parameters = _fire_parameters(module)
    if parameters is None:
        return
    for key in _options(words):
        assert key in parameters, f"{where}: python -m {module} has no option --{key} (it has {sorted(parameters)})"


def _documented_commands():
    for path in DOCUMENTS:
        for block_index, block in enumerate(shell_blocks(path)):
            for words in commands(block):
                yield f"{path.name} block {block_index + 1}: {' '.join(words)[:90]}", words


def test_documented_commands_match_configs_and_entry_points():
    checked = 0
    for where, words in _documented_commands():
        if "monai.bundle" in words and "run" in words:
            _check_bundle_run(words, where)
            checked += 1
        elif words[:2] == ["python", "-m"] and words[2].split(".")[0] in ("scripts", "benchmarks"):
            _check_python_module(words[2], words[3:], where)
            checked += 1
    assert checked >= 20, f"only {checked} commands found: did the documents' code blocks move?"


def test_command_check_catches_a_wrong_key_and_option():
    with pytest.raises(AssertionError, match="--guidance is not a key"):
        _check_bundle_run(
            shlex.split('python -m monai.bundle run --config_file "configs/inference.json" --guidance 3'),
            "x",
        )
    with pytest.raises(AssertionError, match="4 config files; a workflow is one config and at most two overlays"):
        chain = "['configs/train_diffusion.json','configs/distill.json','configs/tiny/distill.json','configs/x.json']"
        _check_bundle_run(["python", "-m", "monai.bundle", "run", "--config_file", chain], "x")
    with pytest.raises(AssertionError, match="has no option --subjects"):
        _check_python_module("scripts.data.synthetic", ["--subjects", "3"], "x")
    with pytest.raises(AssertionError, match="scripts.data.no_such_command does not exist"):
        _check_python_module("scripts.data.no_such_command", [], "x")
    with pytest.raises(AssertionError, match="scripts.common.files has no fire entry point"):
        _check_python_module("scripts.common.files", [], "x")


#: Text that names commands outside the documents' code blocks: prose, the large-file list, the configs'
#: comments, docstrings and error messages. metadata.json is left out: its changelog keeps each version's words.
MENTIONING = [
    *DOCUMENTS,
    *sorted((BUNDLE_ROOT / "docs").glob("*.txt")),
    BUNDLE_ROOT / "large_files.yml",
    *sorted(path for path in (BUNDLE_ROOT / "configs").rglob("*.json") if path.name != "metadata.json"),
    *sorted((BUNDLE_ROOT / "scripts").rglob("*.py")),
    *sorted((BUNDLE_ROOT / "benchmarks").rglob("*.py")),
]
#: ``python -m scripts.x.y`` / ``python -m benchmarks.x``; group 1 is the module.
NAMED_COMMAND = re.compile(r"python -m ((?:scripts|benchmarks)(?:\.\w+)+)")


def test_every_command_named_anywhere_is_an_entry_point():
    """A command named in prose or in a message (``run `python -m scripts....` ``) exists as written."""
    assert NAMED_COMMAND.findall("run `python -m scripts.data.prepare`.") == ["scripts.data.prepare"]
    named: dict[str, str] = {}
    for path in MENTIONING:
        for module in NAMED_COMMAND.findall(path.read_text(encoding="utf-8")):
            named.setdefault(module, path.relative_to(BUNDLE_ROOT).as_posix())
    assert len(named) >= 10, f"only {sorted(named)} named: did the documents move?"
    wrong = []
    for module, where in sorted(named.items()):
        try:
            _entry_point(module)
        except AssertionError as error:
            wrong.append(f"{where}: {error}")
    assert not wrong, "\n".join(wrong)


def _bundle_copy(destination: Path) -> Path:
    outputs = {".git", "data", "models", "output", "evaluation", "dist"}  # top-level folders of a working copy

    def ignore(folder, names):
        skipped = outputs if Path(folder) == BUNDLE_ROOT else set()
        return [n for n in names if n in skipped or n == "__pycache__" or n.endswith(".pyc")]

    shutil.copytree(BUNDLE_ROOT, destination, ignore=ignore)
    return destination


def test_synthetic_trial_of_the_training_guide_runs_as_written(tmp_path):
    """docs/training.md 'Try it on the synthetic data set': data, both stages, sampling, as a user types it."""
    text = (BUNDLE_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## Try it on the synthetic data set", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    bundle = _bundle_copy(tmp_path / "bundle")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=bundle, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    images = sorted((bundle / "output").glob("*.png"))
    assert len(images) == 1 and (bundle / "output" / "manifest.csv").is_file()
    assert (bundle / "models" / "train_autoencoder" / "autoencoder.pt").is_file()
    assert (bundle / "models" / "train_diffusion" / "model.pt").is_file()
