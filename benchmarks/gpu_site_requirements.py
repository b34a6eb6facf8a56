"""medexp's runtime dependencies that a machine lacks, as ``name==version`` lines (the versions installed in the
Python that runs this, e.g. the project's .venv): the closure of medexp's requirements (no extras), stopping at the
packages named in the file given (one name a line; ``#`` comments). ``--present`` prints the names it stopped at
instead: what the machine must already have.

    .venv/bin/python benchmarks/gpu_site_requirements.py benchmarks/gpu_machine_packages.txt
"""
import re
import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    present = {canonical(line.strip()) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
    todo, missing, used = ["medexp"], {}, set()
    while todo:
        for text in distribution(todo.pop()).requires or []:
            req = Requirement(text)
            name = canonical(req.name)
            if (req.marker and not req.marker.evaluate({"extra": ""})) or name in missing:
                continue
            if name in present:
                used.add(name)
                continue
            missing[name] = distribution(req.name).version
            todo.append(req.name)
    lines = sorted(used) if "--present" in sys.argv else [f"{n}=={v}" for n, v in sorted(missing.items())]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
