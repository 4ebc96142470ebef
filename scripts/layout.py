"""The installed layout of radfusion, staged from the source tree, and the checks that
need it: the import contracts (import-linter) and the type check (mypy).

pyproject.toml maps the top-level folders training/ and serving/ to radfusion.training
and radfusion.serving ([tool.setuptools] packages + package-dir). Tools that find modules
by walking the radfusion/ folder (grimp under import-linter, mypy) do not see that
mapping, so this script lays out what `pip install .` would put in site-packages: a
folder tree under .cache/layout/ with one symlink per source file, built from the same
two pyproject tables (one source of truth). Paths in the tools' output are mapped back to
the repository.

    python scripts/layout.py stage      # lay out .cache/layout/ and print its path
    python scripts/layout.py imports    # import contracts ([tool.importlinter])
    python scripts/layout.py mypy       # type check of the core and serving ([tool.mypy])
    python scripts/layout.py check      # both; exit status 1 if either fails
    python scripts/layout.py wheel      # dist/: the project's wheel (built offline) and
                                        # requirements-serve.txt for the bento
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".cache" / "layout"
BIN = Path(sys.executable).parent
SOURCE_SUFFIXES = {".py", ".pyi"}
# mypy checks the core and serving; training (torch, Lightning, MONAI) is left out.
UNTYPED_PACKAGES = ("radfusion.training",)


def setuptools_config(root: Path = ROOT) -> tuple[list[str], dict[str, str]]:
    """[tool.setuptools] packages and package-dir, as pyproject.toml states them."""
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(tool["packages"]), dict(tool.get("package-dir", {}))


def source_dir(package: str, package_dir: dict[str, str]) -> str:
    """The folder, relative to the repository, that holds `package` (setuptools' rule:
    the longest mapped prefix wins; an unmapped package lives at its dotted path)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return "/".join([package_dir[prefix], *parts[cut:]]).strip("/")
    if "" in package_dir:
        return "/".join([package_dir[""], *parts]).strip("/")
    return "/".join(parts)


def package_folders(root: Path = ROOT) -> dict[str, str]:
    """Installed package name -> source folder, for every package pyproject lists."""
    packages, package_dir = setuptools_config(root)
    return {package: source_dir(package, package_dir) for package in packages}


def unlisted_folders(root: Path, folders: dict[str, str]) -> list[str]:
    """Sub-folders of listed packages that hold Python files but are not listed."""
    listed = set(folders.values())
    found = set()
    for folder in listed:
        for sub in (root / folder).iterdir():
            relative = sub.relative_to(root).as_posix()
            if sub.is_dir() and sub.name != "__pycache__" and relative not in listed and any(sub.rglob("*.py")):
                found.add(relative + "/")
    return sorted(found)


def stage(root: Path = ROOT, dest: Path = STAGE) -> dict[str, str]:
    """Lay out the installed tree under `dest` (one symlink per source file) and return
    staged folder -> source folder, both relative to their roots, for mapping paths back."""
    if dest.exists():
        shutil.rmtree(dest)
    folders = package_folders(root)
    unlisted = unlisted_folders(root, folders)
    if unlisted:
        raise SystemExit(
            f"layout: {', '.join(unlisted)} hold Python files but are not in pyproject.toml's "
            "[tool.setuptools] packages: the wheel would leave them out and no check would see them"
        )
    for package, folder in folders.items():
        target = dest / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        source = root / folder
        if not (source / "__init__.py").is_file():
            raise SystemExit(f"layout: {package} -> {folder}/ has no __init__.py")
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES:
                (target / path.name).symlink_to(path)
    return {package.replace(".", "/"): folder for package, folder in folders.items()}


def mapper(dest: Path, folders: dict[str, str]):
    """A function that rewrites staged paths in tool output to repository paths."""
    prefixes = sorted(folders, key=len, reverse=True)
    staged = "|".join(re.escape(prefix) for prefix in prefixes)
    # A staged folder at the start of a path (absolute, or relative to the stage),
    # followed by a file name.
    pattern = re.compile(rf"(?:{re.escape(str(dest))}/|(?<![\w/.]))({staged})/(?=[\w.]+\.pyi?\b)")
    return lambda text: pattern.sub(lambda m: folders[m.group(1)] + "/", text)


def run(command: list[str], cwd: Path, to_repo) -> tuple[int, str]:
    """Run a tool in the staged folder; its exit status and output with repository paths."""
    env = dict(os.environ, PYTHONPATH=str(cwd))
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return result.returncode, to_repo(result.stdout + result.stderr)


def check_imports(root: Path = ROOT, dest: Path = STAGE) -> tuple[int, str]:
    """lint-imports on the staged tree, with the contracts in root's pyproject.toml.
    It runs from the staged folder so that `radfusion` resolves to the staged package
    (lint-imports puts the working directory first on sys.path)."""
    folders = stage(root, dest)
    command = [str(BIN / "lint-imports"), "--no-logo", "--no-cache", str(root / "pyproject.toml")]
    return run(command, dest, mapper(dest, folders))


def check_types(root: Path = ROOT, dest: Path = STAGE) -> tuple[int, str]:
    """mypy on the staged core and serving packages, with root's [tool.mypy]."""
    folders = stage(root, dest)
    files = [
        str(Path(staged) / path.name)
        for staged in sorted(folders)
        if not staged.replace("/", ".").startswith(UNTYPED_PACKAGES)
        for path in sorted((dest / staged).iterdir())
        if path.suffix in SOURCE_SUFFIXES
    ]
    command = [
        str(BIN / "mypy"),
        "--config-file",
        str(root / "pyproject.toml"),
        "--cache-dir",
        str(root / ".cache" / "mypy"),
        *files,
    ]
    return run(command, dest, mapper(dest, folders))


# What a wheel is built from: the packages' folders and the files pyproject names.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE")


def build_wheel(root: Path = ROOT, outdir: Path = ROOT / "dist") -> Path:
    """Build the project's wheel into `outdir` without an index (--no-isolation: the
    venv's setuptools) and from a copy of the sources, so that the build leaves nothing
    in the working tree. Returns the wheel's path."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="radfusion-wheel-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in WHEEL_SOURCES:
            if (root / name).exists():
                shutil.copy2(root / name, copy / name)
        for folder in sorted({folder.split("/")[0] for folder in package_folders(root).values()}):
            shutil.copytree(root / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        command = [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(Path(tmp) / "out"), "."]
        result = subprocess.run(command, cwd=copy, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"wheel build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        (built,) = (Path(tmp) / "out").glob("*.whl")
        target = outdir / built.name
        shutil.copy2(built, target)
    return target


# The serving install (bentofile.yaml): the core's dependencies and these extras.
SERVING_EXTRAS = ("serve", "cpu")


def serving_requirements(root: Path = ROOT, extras: tuple[str, ...] = SERVING_EXTRAS) -> str:
    """requirements.txt text for the serving install, from pyproject.toml [project]:
    the bento installs it, then the wheel itself (whose own requirements it satisfies)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = [f"# Generated by scripts/layout.py from pyproject.toml: dependencies + {', '.join(extras)}."]
    lines += project["dependencies"]
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "check"
    checks = {"imports": [check_imports], "mypy": [check_types], "check": [check_imports, check_types]}
    if what == "stage":
        stage()
        print(STAGE)
        return 0
    if what == "wheel":
        print(build_wheel())
        requirements = ROOT / "dist" / "requirements-serve.txt"
        requirements.write_text(serving_requirements())
        print(requirements)
        return 0
    if what not in checks:
        raise SystemExit(f"usage: {Path(__file__).name} [stage|imports|mypy|check|wheel]")
    failed = False
    for check in checks[what]:
        code, output = check()
        sys.stdout.write(output)
        sys.stdout.flush()
        failed |= code != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
