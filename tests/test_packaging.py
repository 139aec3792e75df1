"""pyproject.toml and environment.yml list the same dependencies, with the same version bounds."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def normalise(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]).union(*project["optional-dependencies"].values())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip += [p for p in entry["pip"] if not p.startswith("-")]
        elif not re.match(r"(python|pip)\b", entry):
            conda.append(entry)
    listed = {normalise(r) for r in conda + pip}
    assert listed == {normalise(r) for r in wanted}
    assert any(isinstance(e, str) and e.startswith("python=3.1") for e in env["dependencies"])


def test_requires_python_311():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {normalise(line)[0]: line.split("==")[1] for line in lines if "==" in line}


def declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(normalise(r) for r in set(project["dependencies"]).union(*project["optional-dependencies"].values()))


def test_lock_pins_every_dependency_inside_its_declared_range():
    from packaging.specifiers import SpecifierSet

    lock = pins(ROOT / "requirements" / "lock.txt")
    for name, spec in declared().items():
        assert name in lock, f"{name} is not in requirements/lock.txt; run make lock"
        assert SpecifierSet(spec).contains(lock[name].split("+")[0], prereleases=True), (name, spec, lock[name])


def test_lowest_and_newest_are_the_ends_of_the_declared_torch_range():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    ranges = declared()
    lowest, newest = pins(ROOT / "requirements" / "lowest.txt"), pins(ROOT / "requirements" / "newest.txt")
    for name in ("torch", "torchvision"):
        spec = SpecifierSet(ranges[name])
        assert spec.contains(lowest[name]) and spec.contains(newest[name]), name
        lower = next(s.version for s in spec if s.operator == ">=")
        upper = next(s.version for s in spec if s.operator == "<")
        assert Version(lowest[name]) == Version(lower), f"{name}: lowest.txt must pin the declared lower bound"
        assert Version(newest[name]).release[:2] < Version(upper).release[:2], name
        assert Version(newest[name]).release[:2] >= (Version(upper).release[0], Version(upper).release[1] - 1), \
            f"{name}: newest.txt must be in the last minor release the range admits"
