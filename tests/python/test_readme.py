"""clients/python/README.md's example is examples/quickstart.py, and it runs
against the real daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest

from support import DaemonTestCase

CLIENT_DIR = os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "clients", "python")


class Readme(DaemonTestCase):
    def test_example_is_the_quickstart_script(self) -> None:
        with open(os.path.join(CLIENT_DIR, "README.md")) as f:
            blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
        with open(os.path.join(CLIENT_DIR, "examples", "quickstart.py")) as f:
            self.assertEqual(blocks[0], f.read())

    def test_quickstart_runs(self) -> None:
        run = subprocess.run(
            [sys.executable, os.path.join(CLIENT_DIR, "examples", "quickstart.py")],
            env={**os.environ, "OPTIMD_URL": self.daemon.url},
            capture_output=True, text=True, timeout=240)
        self.assertEqual(run.returncode, 0, run.stderr)
        lines = run.stdout.splitlines()
        self.assertTrue(lines[0].startswith("Hello(server='optimd'"), lines)
        w = [float(v) for v in re.findall(r"-?\d+\.\d*", lines[1].split("after")[0])]
        self.assertEqual(len(w), 3)
        for got, want in zip(w, (1.0, -2.0, 3.0)):
            self.assertAlmostEqual(got, want, delta=0.01)
        self.assertIn("after 200 steps", lines[1])
        self.assertRegex(lines[2], r"^loss \d+\.\d{4}, lr 0\.0025$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
