"""The README's promises: its example runs, and its commands are the ones CI and users run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_example_runs_and_hand_gradients_match_lax(capsys):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    grads, grads_hand = namespace["grads"], namespace["grads_hand"]
    assert grads["conv1"]["w"].shape == (5, 5, 1, 6)
    assert float(abs(grads["conv1"]["w"] - grads_hand["conv1"]["w"]).max()) < 1e-5
    assert namespace["out_shape"] == (-1, 10)
    assert "{'b': (6,), 'w': (5, 5, 1, 6)}" in capsys.readouterr().out


def test_readme_opens_with_the_main_job_and_the_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    main_job, tests = (line.split("#")[0].strip() for line in first_block[:2])
    assert main_job == "pip install -e . && jaxconv train"
    assert tests == 'pip install -e ".[test]" && python -m pytest'
    assert tests in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's test command
