"""Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md with a file's contents
(or stdin): the README's demo output and benchmark tables are pasted by this, never typed.

    python scripts/fill_readme.py NAME [FILE]
"""

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def fill(name: str, body: str, readme: Path = README, required: bool = True) -> None:
    """`required=False`: a README without the markers is left alone (the table is printed by the caller)."""
    text = readme.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        if not required:
            return
        sys.exit(f"error: {readme}: no {start} … {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body.rstrip()}\n{end}{tail}")


if __name__ == "__main__":
    name = sys.argv[1]
    body = Path(sys.argv[2]).read_text() if len(sys.argv) > 2 else sys.stdin.read()
    fill(name, body)
