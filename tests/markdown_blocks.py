"""The code blocks of a Markdown page, and the rules by which the docs tests run them.

Conventions for README.md and docs/*.md (tests/test_docs.py runs them, tests/test_readme.py the README's first):

- Every ```python block runs. The blocks of one page run in order in one namespace, in a fresh
  interpreter as a user has it (float32, JAX's defaults); a page must not change JAX's global
  config (use `with jax.enable_x64(True):`). Blocks in other fences (```bash, ```text) do not run.
- Printed output is checked where the page shows it: a ```text block that follows a python block
  (only blank lines between) is that block's expected stdout. In it, `...` inside a line matches
  any text on that line, and a line that is only `...` matches any number of lines; trailing
  whitespace and blank lines at the ends are ignored.
- A block that imports an optional package (torch, safetensors, matplotlib, flax, equinox), or
  follows the marker `<!-- docs-test: needs torch safetensors -->` (only blank lines between),
  is skipped, with the rest of its page, when one of those packages is not installed.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import re

OPTIONAL = ("torch", "safetensors", "matplotlib", "flax", "equinox")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*needs\s+(?P<names>[\w\s]+?)\s*-->$")


@dataclasses.dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    expected: str | None  # the following ```text block, if any
    needs: tuple[str, ...]  # optional packages it imports or its marker names

    def missing(self) -> list[str]:
        return [name for name in self.needs if importlib.util.find_spec(name) is None]


def _imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_blocks(path: pathlib.Path, root: pathlib.Path) -> list[Block]:
    """The ```python blocks of the page at `path`, each with its expected output and optional needs."""
    lines = path.read_text().split("\n")
    fences = []  # (language, first line index, last line index, body)
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        fences.append((match.group(1), i, end, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    blocks = []
    for k, (lang, start, end, body) in enumerate(fences):
        if lang != "python":
            continue
        expected = None
        if k + 1 < len(fences) and fences[k + 1][0] == "text":
            between = lines[end + 1 : fences[k + 1][1]]
            if all(not line.strip() for line in between):
                expected = fences[k + 1][3]
        needs = set(_imports(body)) & set(OPTIONAL)
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = _MARKER.match(lines[before].strip()) if before >= 0 else None
        if marker:
            needs |= set(marker.group("names").split())
        blocks.append(Block(str(path.relative_to(root)), start + 1, body, expected, tuple(sorted(needs))))
    return blocks


def output_matches(expected: str, actual: str) -> bool:
    """Whether `actual` printed output matches the page's `expected` text (`...` as the wildcard)."""
    exp = [line.rstrip() for line in expected.strip("\n").split("\n")]
    act = [line.rstrip() for line in actual.strip("\n").split("\n")]
    parts = []
    for line in exp:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.fullmatch("".join(parts), "\n".join(act) + "\n", re.S) is not None
