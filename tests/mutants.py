"""The mutation sweep: does the test suite notice a plausible mistake in sidlib?

    python tests/mutants.py                    # every mistake in tests/mutants.yml (``make mutants``)
    python tests/mutants.py --only sid-alpha-swapped --jobs 2
    python tests/mutants.py --full             # survivors are retried on every unit test

Each entry of ``tests/mutants.yml`` names one small mistake (a sign flip, alpha for 1 - alpha, a
dropped loss term, a removed detach, a wrong reduction) as a text replacement in one sidlib file,
and the unit tests that should catch it. The sweep applies each mistake to a copy of sidlib in a
scratch folder (the working tree is never touched), runs those tests against the copy, and reports
whether they failed (the mistake is *killed*) or passed (it *survived*). The tests named are a
subset of what ``make test`` runs, so a kill here is a kill by ``make test``; ``--full`` retries
each survivor on all unit tests before calling it a survivor. The report is written atomically to
``results/mutants/summary.json``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests" / "mutants.yml"
REPORT = ROOT / "results" / "mutants" / "summary.json"
# the unit tests --full retries a survivor on: all but the notebooks' and the book's, which re-run notebooks
SLOW = ("test_book.py", "test_book_html.py", "test_notebook_records.py", "test_packaging.py")
FIELDS = ("id", "file", "find", "replace", "tests", "mistake")


class MutantError(Exception):
    """A mutant list that cannot be applied; the message names the entry and the fix."""


def load(path: Path = LIST) -> list[dict]:
    mutants = yaml.safe_load(path.read_text()) or []
    seen = set()
    for m in mutants:
        missing = [f for f in FIELDS if f not in m]
        if missing:
            raise MutantError(f"{path.name}: entry {m.get('id', m)!r} lacks {', '.join(missing)}")
        if m["id"] in seen:
            raise MutantError(f"{path.name}: the id {m['id']!r} is used twice; give each mistake its own id")
        seen.add(m["id"])
        source = (ROOT / m["file"]).read_text()
        if source.count(m["find"]) != 1:
            raise MutantError(f"{path.name}: {m['id']}: the text to replace occurs {source.count(m['find'])} times "
                              f"in {m['file']} (needs exactly 1); update the entry to the code as it is now")
    return mutants


def pytest_command(tests: list[str]) -> list[str]:
    # -p no:cacheprovider: nothing is written into the repository; -x: the first failure kills
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]


def run_tests(tree: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, the last lines of pytest's output) of
    ``tests`` run in ``tree`` (the repository, or a shadow of it), with its sidlib first on the path."""
    env = dict(os.environ)
    cwd = tree
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.perf_counter()
    try:
        done = subprocess.run(pytest_command(tests), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, ""
    seconds = time.perf_counter() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    # pytest: 0 all passed, 1 some failed; anything else (no tests collected, a usage error) is the list's fault
    outcome = {0: "passed", 1: "failed"}.get(done.returncode, "error")
    return outcome, seconds, tail


def apply(mutant: dict, scratch: Path) -> Path:
    """A shadow of the repository in ``scratch``: sidlib and tests copied (pytest puts the tests'
    root on the import path, so the copy must sit there), everything else linked, and the mutant's
    one replacement made in the copy. Returns the shadow's root."""
    for entry in ROOT.iterdir():
        if entry.name in ("sidlib", "tests"):
            shutil.copytree(entry, scratch / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif not entry.name.startswith(".git"):
            (scratch / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    target = scratch / mutant["file"]
    target.write_text(target.read_text().replace(mutant["find"], mutant["replace"], 1))
    return scratch


def sweep_one(mutant: dict, timeout: int, full: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant['id']}-") as scratch:
        shadow = apply(mutant, Path(scratch))
        outcome, seconds, tail = run_tests(shadow, mutant["tests"], timeout)
        retried = False
        if outcome == "passed" and full:
            unit = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if p.name not in SLOW)
            outcome, more, tail = run_tests(shadow, unit, timeout * 10)
            seconds, retried = seconds + more, True
    status = {"failed": "killed", "timeout": "killed (timeout)", "passed": "survived"}.get(outcome, "error")
    return {"id": mutant["id"], "file": mutant["file"], "mistake": mutant["mistake"], "tests": mutant["tests"],
            "status": status, "retried_on_all_unit_tests": retried, "seconds": round(seconds, 1), "output": tail}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (each runs its own pytest)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per mutant's tests")
    parser.add_argument("--full", action="store_true", help="retry each survivor on all unit tests")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    try:
        mutants = load()
        unknown = set(args.only or []) - {m["id"] for m in mutants}
        if unknown:
            raise MutantError(f"no mutant {', '.join(sorted(unknown))} in {LIST.name}; `--only` takes its ids")
        if args.jobs < 1:
            raise MutantError(f"--jobs must be at least 1, got {args.jobs}")
    except MutantError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chosen = [m for m in mutants if not args.only or m["id"] in args.only]
    # the unchanged sidlib must pass every named test, or a "kill" would mean nothing
    named = sorted({t for m in chosen for t in m["tests"]})
    outcome, seconds, tail = run_tests(ROOT, named, args.timeout * 5)
    if outcome != "passed":
        print(f"error: the tests the mutants name fail on the unchanged sidlib ({outcome}); fix them first:\n{tail}",
              file=sys.stderr)
        return 2
    print(f"unchanged sidlib: {len(named)} test files pass ({seconds:.0f} s)")
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda m: sweep_one(m, args.timeout, args.full), chosen):
            print(f"{result['status']:>16}  {result['id']}  ({result['seconds']:.0f} s)", flush=True)
            results.append(result)
    killed = sum(r["status"].startswith("killed") for r in results)
    report = {"mutants": len(results), "killed": killed, "kill_rate": killed / len(results) if results else None,
              "survivors": [r["id"] for r in results if r["status"] == "survived"],
              "errors": [r["id"] for r in results if r["status"] == "error"], "results": results}
    sys.path.insert(0, str(ROOT))
    from sidlib.io import write_json  # atomic
    args.report.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.report, report)
    print(f"{killed} of {len(results)} mistakes killed ({100 * report['kill_rate']:.0f}%); "
          f"survivors: {', '.join(report['survivors']) or 'none'}; report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
