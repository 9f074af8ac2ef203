"""Counting and judging for scripts/mutation_check.sh: one JUnit XML report per run in, one
summary line per run out, and the verdict (CPU-tested in tests/test_mutation_check.py).

    python3 scripts/mutation_report.py line NAME REPORT.xml PYTEST_RC SECONDS [--mutated]
        prints the run's summary line; exit 0 if the run went the way it must
        (the unmutated build green, a mutated one red), 1 if not
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(report: Path) -> dict:
    """{"passed", "failed", "errors", "skipped"} of a pytest --junitxml report (all zero and
    errors 1 when the report is missing or unreadable: pytest did not get to write it)."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def verdict(c: dict, rc: int, mutated: bool) -> tuple[bool, str]:
    """(as it must be, why). Unmutated: green = every test ran and passed (a skip or an error
    is not green). Mutated: red = at least one test failed on its assertions, none errored
    (a build or collection error is no evidence), and the tests did run."""
    ran = c["passed"] + c["failed"]
    if c["errors"]:
        return False, f"{c['errors']} errors (build, collection or fixture): no verdict"
    if ran == 0:
        return False, "no test ran"
    if not mutated:
        if c["failed"] or rc != 0:
            return False, "RED: the real kernel fails its accuracy tests"
        if c["skipped"]:
            return False, f"{c['skipped']} skipped: not all accuracy tests ran"
        return True, "green, as it must be"
    if c["failed"]:
        return True, "red, as it must be"
    return False, "GREEN: the suite does not see this mutation (or the kernel ignores the macro)"


def line(name: str, c: dict, rc: int, seconds: float, mutated: bool) -> tuple[bool, str]:
    ok, why = verdict(c, rc, mutated)
    return ok, (f"{name}: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
                f"{c['skipped']} skipped in {seconds:.0f} s -> {why}")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[0] != "line":
        print(__doc__, file=sys.stderr)
        return 2
    name, report, rc, seconds = argv[1], Path(argv[2]), int(argv[3]), float(argv[4])
    ok, text = line(name, counts(report), rc, seconds, "--mutated" in argv[5:])
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
