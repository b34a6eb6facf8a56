"""Write docs/config-reference.md from conf/: every group, every option, every key with its comment.

    python docs/make_config_reference.py          # rewrite the reference
    python docs/make_config_reference.py --check  # exit 1 if it is stale (tests/e2e/test_docs.py runs this)

The YAML files are the source of truth and carry their own comments, so the reference quotes them whole: a file's
leading comment becomes the option's description, its body (with its per-key comments) follows as YAML.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REFERENCE = ROOT / "docs" / "config-reference.md"
COMMANDS = {"train.yaml": "medexp-train", "eval.yaml": "medexp-eval", "predict.yaml": "medexp-predict",
            "export.yaml": "medexp-export", "plan.yaml": "medexp-plan"}


def split_header(text: str) -> tuple[str, str]:
    """The leading comment block (as prose) and the rest of a YAML file."""
    lines = text.splitlines()
    header = []
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        line = lines.pop(0)
        if line.startswith("# @package"):
            continue
        header.append(line.lstrip("#").strip())
    return " ".join(h for h in header if h).strip(), "\n".join(lines).strip()


def section(title: str, path: Path, level: str) -> list[str]:
    description, body = split_header(path.read_text())
    out = [f"{level} {title}", "", f"`{path.relative_to(ROOT)}`" + (f": {description}" if description else ""), ""]
    if body:
        out += ["```yaml", body, "```", ""]
    return out


def reference() -> str:
    out = ["# Config reference", "",
           "Generated from `conf/` by `docs/make_config_reference.py`; do not edit by hand (a test fails when it is "
           "stale). Choose an option with `group=option`, override a key with `group.key=value`; "
           "`medexp-train --cfg job` prints the composed config.", ""]
    out += ["## Commands", ""]
    for name, command in COMMANDS.items():
        if (CONF / name).is_file():
            out += section(f"`{command}` ({name})", CONF / name, "###")
    groups = sorted({p.parent.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF})
    out += ["## Groups", "", "| group | options |", "|---|---|"]
    out += [f"| `{g}` | {', '.join(f'`{p.stem}`' for p in sorted((CONF / g).glob('*.yaml')))} |" for g in groups]
    out.append("")
    for group in groups:
        out += [f"## `{group}`", ""]
        for path in sorted((CONF / group).glob("*.yaml")):
            out += section(f"`{group}={path.stem}`", path, "###")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config-reference.md is stale")
    args = parser.parse_args()
    text = reference()
    if args.check:
        if not REFERENCE.is_file() or REFERENCE.read_text() != text:
            print(f"{REFERENCE.relative_to(ROOT)} is stale: run python docs/make_config_reference.py", file=sys.stderr)
            sys.exit(1)
        return
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
