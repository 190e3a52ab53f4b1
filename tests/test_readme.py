"""The README's promises: its example runs, and its commands are the ones CI and users run."""

import os
import pathlib
import re
import subprocess
import sys

from markdown_blocks import output_matches, python_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_example_runs_and_hand_gradients_match_lax(tmp_path):
    # The first look: LeNet-5's gradient through im2col's hand-derived backward against lax's, in float32 and in
    # float64 (gradcheck), run in a fresh interpreter as a user runs it (this suite turns float64 on; a user has not).
    block = python_blocks(ROOT / "README.md", ROOT)[0]
    check = """
import numpy as np
assert out_shape == (-1, 10)
assert grads["conv1"]["w"].shape == (5, 5, 1, 6) and grads["conv1"]["w"].dtype == jnp.float32
for g, g_hand in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_hand)):  # every leaf, to float32 rounding
    np.testing.assert_allclose(g_hand, g, rtol=1e-4, atol=1e-6)
assert report.ok and len(report.rows) == 20  # 10 leaves, each against finite differences and against lax
assert report.max_rel("reference") < 1e-12  # float64: hand and lax agree to rounding
assert report.max_rel("finite differences") < 1e-6
"""
    run = subprocess.run([sys.executable, "-c", block.code + check], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert block.expected is not None and output_matches(block.expected, run.stdout), run.stdout


def test_readme_opens_with_the_main_job_and_the_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    main_job, tests = (line.split("#")[0].strip() for line in first_block[:2])
    assert main_job == "pip install -e . && jaxconv train"
    assert tests == 'pip install -e ".[test]" && python -m pytest'
    assert tests in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's test command
