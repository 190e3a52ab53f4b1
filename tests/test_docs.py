"""The docs are part of the product: every example runs, every link and benchmark id resolves, the site builds.

- Every ```python block of README.md and docs/*.md runs (README.md's first block is
  tests/test_readme.py's, with its own assertions). The rules a page follows are in
  tests/markdown_blocks.py: blocks of a page run in order in one namespace; a ```text block right
  after a python block is its expected stdout (`...` is the wildcard); blocks importing torch,
  safetensors, matplotlib, flax or equinox (or marked `<!-- docs-test: needs NAME -->`) are
  skipped with the rest of their page when the package is missing. All pages run in one fresh
  interpreter, each page in a namespace and a working directory of its own, so the suite pays
  for importing JAX once.
- The API reference lists every public name, and every public submodule has a page.
- Relative links in README.md resolve, and every `benchmarks.md#id` cited in the code or the
  docs is a section id of docs/benchmarks.md.
- `mkdocs build --strict` passes (when mkdocs is installed; CI installs the `docs` extra).
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

from markdown_blocks import output_matches, python_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
PUBLIC_SUBMODULES = ("train", "loop", "data", "models", "interop", "parallel", "checkpoint", "gradcheck", "reference",
                     "devices", "compile", "layers", "initializers")
# The sections that the code and the policy cite; others may be added, none of these removed.
REQUIRED_IDS = ("taps-chunk", "rows-band", "rows-channels", "rows-direct", "rows-blocks", "rows-dx", "taps-auto",
                "im2col-auto", "lax-channels", "guard-chunk", "xla-libs", "lax-buffers")


def _blocks_to_run():
    pages = {}
    for path in PAGES:
        blocks = python_blocks(path, ROOT)
        if path.name == "README.md":
            blocks = blocks[1:]  # the first is tests/test_readme.py's
        if blocks:
            pages[str(path.relative_to(ROOT))] = blocks
    return pages


BLOCKS = _blocks_to_run()

# Runs in a fresh interpreter: reads {page: [[line, code], ...]} on stdin, runs each page's blocks in order in one
# namespace (cwd: a fresh folder per page), and writes {page: [{"line", "out", "error"}, ...]} as JSON to argv[1].
_DRIVER = r"""
import contextlib, io, json, os, sys, tempfile, traceback
pages = json.load(sys.stdin)
results = {}
home = tempfile.mkdtemp(prefix="jaxconv-docs-")
for n, (page, blocks) in enumerate(pages.items()):
    os.chdir(home)
    os.makedirs(str(n))
    os.chdir(str(n))
    namespace = {"__name__": "__main__"}
    results[page] = []
    for line, code in blocks:
        out = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except BaseException:
            error = traceback.format_exc()
        results[page].append({"line": line, "out": out.getvalue(), "error": error})
        if error:
            break
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def page_results(tmp_path_factory):
    """Runs every page's blocks (skipping pages whose optional packages are missing) in one subprocess."""
    runnable = {page: blocks for page, blocks in BLOCKS.items() if not any(b.missing() for b in blocks)}
    payload = json.dumps({page: [[b.line, b.code] for b in blocks] for page, blocks in runnable.items()})
    out = tmp_path_factory.mktemp("docs") / "results.json"
    run = subprocess.run([sys.executable, "-c", _DRIVER, str(out)], input=payload, capture_output=True, text=True,
                         cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = out.read_text() if out.exists() else ""
    assert run.returncode == 0 and text, f"the docs runner failed:\n{run.stderr[-3000:]}"
    return json.loads(text)


@pytest.mark.parametrize("page", sorted(BLOCKS))
def test_page_examples_run_and_print_what_the_page_shows(page, page_results):
    blocks = BLOCKS[page]
    missing = sorted({name for b in blocks for name in b.missing()})
    if missing:
        pytest.skip(f"{page} needs {', '.join(missing)}")
    results = page_results[page]
    for block, result in zip(blocks, results):
        assert result["error"] is None, f"{page}:{block.line} raised:\n{result['error']}"
        if block.expected is not None:
            assert output_matches(block.expected, result["out"]), (
                f"{page}:{block.line} printed\n{result['out']}\nbut the page shows\n{block.expected}")
    assert len(results) == len(blocks)


def test_markdown_block_rules():
    # The wildcard rules the pages rely on.
    assert output_matches("a ... c\n...\nlast", "a b c\nx\ny\nlast\n")
    assert output_matches("(-1, 10)", "(-1, 10)\n")
    assert not output_matches("a ... c", "a b\nc")
    assert not output_matches("1.0", "2.0")


def test_api_reference_lists_every_public_name():
    import jaxconv

    index = (ROOT / "docs" / "api" / "index.md").read_text()
    listed = set(re.findall(r"^\s+- (\w+)$", index, re.M)) | set(re.findall(r"^::: jaxconv\.\w+\.(\w+)$", index, re.M))
    names = {n for n in jaxconv.__all__ if not isinstance(getattr(jaxconv, n), types.ModuleType)}
    assert names - listed == set(), "docs/api/index.md misses public names"
    assert listed - names == set(), "docs/api/index.md lists names that are not in jaxconv.__all__"
    modules = {n for n in jaxconv.__all__ if isinstance(getattr(jaxconv, n), types.ModuleType)} | set(PUBLIC_SUBMODULES)
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in sorted(modules):
        page = ROOT / "docs" / "api" / f"{name}.md"
        assert page.exists() and f"::: jaxconv.{name}" in page.read_text(), f"no API page for jaxconv.{name}"
        assert f"api/{name}.md" in nav, f"mkdocs.yml's nav misses api/{name}.md"


def _section_ids(path):
    return set(re.findall(r"^#+ .*\{#([\w-]+)\}\s*$", path.read_text(), re.M))


def test_benchmark_ids_cited_anywhere_exist():
    ids = _section_ids(ROOT / "docs" / "benchmarks.md")
    assert set(REQUIRED_IDS) <= ids, f"docs/benchmarks.md lacks {sorted(set(REQUIRED_IDS) - ids)}"
    sources = [*(ROOT / "jaxconv").rglob("*.py"), *(ROOT / "experiments").glob("*.py"), *PAGES]
    for path in sources:
        for cited in re.findall(r"benchmarks\.md#([\w-]+)", path.read_text()):
            assert cited in ids, f"{path.relative_to(ROOT)} cites docs/benchmarks.md#{cited}, which does not exist"


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"\w+://|#|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README.md links to {path}, which does not exist"
        if anchor and path == "docs/benchmarks.md":
            assert anchor in _section_ids(ROOT / path), f"README.md links to {target}, an unknown section"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs and mkdocstrings are not installed (pip install -e '.[docs]')")
def test_docs_site_builds_strict(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
