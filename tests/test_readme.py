"""The README's promises: its example runs, and its commands are the ones CI and users run."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_example_runs_and_hand_gradients_match_lax(tmp_path):
    # In a fresh interpreter, as a user runs it (this suite turns float64 on).
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    check = (
        "\nassert grads['conv1']['w'].shape == (5, 5, 1, 6)"
        "\nassert float(abs(grads['conv1']['w'] - grads_hand['conv1']['w']).max()) < 1e-5"
        "\nassert out_shape == (-1, 10)"
        "\nassert 0 <= float(metrics['accuracy']) <= 1 and float(metrics['loss']) > 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "(-1, 10) {'b': (6,), 'w': (5, 5, 1, 6)}" in run.stdout


def test_readme_opens_with_the_main_job_and_the_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    main_job, tests = (line.split("#")[0].strip() for line in first_block[:2])
    assert main_job == "pip install -e . && jaxconv train"
    assert tests == 'pip install -e ".[test]" && python -m pytest'
    assert tests in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's test command
