"""Fail when a pytest JUnit XML report holds a skip that .ci/expected_skips does not allow.

    python .ci/check_skips.py REPORT.xml [ALLOW_LIST]

ALLOW_LIST (default: .ci/expected_skips beside this file) has one regular expression a line, matched against
"<test id>: <skip reason>"; blank lines and lines starting with # are ignored. Exit 0 when every skip is
allowed, 1 otherwise (each unexpected skip printed with its reason), 2 when the report cannot be read.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def skips(report: Path) -> list[str]:
    """``"<classname>::<name>: <reason>"`` for every skipped test case in the report. A strict expected
    failure (``pytest.xfail``: the test ran and failed as it must) is not a skip."""
    found = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for skipped in case.findall("skipped"):
            if skipped.get("type") == "pytest.xfail":
                continue
            reason = skipped.get("message") or (skipped.text or "").strip()
            found.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
    return found


def allowed_patterns(path: Path) -> list[re.Pattern[str]]:
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [re.compile(line) for line in lines if line and not line.startswith("#")]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    report = Path(argv[0])
    allow = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("expected_skips")
    try:
        found = skips(report)
    except (OSError, ET.ParseError) as exc:
        print(f"cannot read the pytest report {report}: {exc}", file=sys.stderr)
        return 2
    patterns = allowed_patterns(allow)
    unexpected = [s for s in found if not any(p.search(s) for p in patterns)]
    print(f"skipped tests: {len(found)}, of them not in {allow.name}: {len(unexpected)}")
    for line in unexpected:
        print(f"  unexpected skip: {line}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
