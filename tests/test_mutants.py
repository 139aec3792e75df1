"""The mutation sweep's list stays applicable as sidlib changes, and a mistake it applies is seen."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("mutants", Path(__file__).parent / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutants)


def test_every_mistake_applies_to_sidlib_as_it_is_now():
    listed = mutants.load()  # raises if a text to replace is missing or ambiguous
    assert len(listed) >= 2 and all(m["find"] != m["replace"] for m in listed)
    for m in listed:
        assert all((mutants.ROOT / t.split("::")[0]).is_file() for t in m["tests"]), m["id"]


def test_a_shadow_holds_the_mistake_and_leaves_the_working_tree_alone(tmp_path):
    mistake = mutants.load()[0]
    before = (mutants.ROOT / mistake["file"]).read_text()
    shadow = mutants.apply(mistake, tmp_path)
    assert mistake["replace"] in (shadow / mistake["file"]).read_text()
    assert (mutants.ROOT / mistake["file"]).read_text() == before
    assert (shadow / "notebooks").resolve() == (mutants.ROOT / "notebooks").resolve()


def test_a_stale_entry_is_named_with_its_fix(tmp_path):
    listed = tmp_path / "m.yml"
    listed.write_text('- {id: gone, file: sidlib/io.py, find: "no such text", replace: "x", mistake: m, tests: []}\n')
    with pytest.raises(mutants.MutantError, match="gone: the text to replace occurs 0 times"):
        mutants.load(listed)
