"""Stand-in for ``orca`` / ``g16`` that replays real outputs from shared/realdata.

Called as ``replay.py sNNNNN.inp > sNNNNN.out`` (ORCA) or ``replay.py < sNNNNN.com > sNNNNN.log``
(Gaussian). The JSON file named in ``MLPES_STANDIN_CONFIG`` maps the structure number (from the
``aiida-mlpes structure N`` line of the input) to a real output file::

    {"outputs": {"0": "/.../h2_grad_orca.out", "1": "/.../test_orca.log"}, "truncate": [4],
     "inputs_dir": "/tmp/..."}

The output is copied to stdout (``truncate``: only its first third, as a killed run leaves it); every input
received is saved in ``inputs_dir`` so a test can check what the program would have read.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    config = json.loads(Path(os.environ["MLPES_STANDIN_CONFIG"]).read_text())
    text = Path(argv[0]).read_text() if argv else sys.stdin.read()
    m = re.search(r"aiida-mlpes structure (\d+)", text)
    index = m.group(1) if m else "-1"
    if config.get("inputs_dir"):
        name = Path(argv[0]).name if argv else f"stdin_{index}.com"
        (Path(config["inputs_dir"]) / name).write_text(text)
    output = config["outputs"].get(index)
    if output is None:
        print(f"stand-in: no real output configured for structure {index}", file=sys.stderr)
        return 2
    content = Path(output).read_text(errors="replace")
    if int(index) in config.get("truncate", []):
        content = content[: len(content) // 3]
    sys.stdout.write(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
