"""scripts/demo.sh, the README's first command, run as a user would run it (with --exit-after).

It must set up, start Redis, a worker and the site, print where to open it,
show the example answers, and stop every process it started.
"""

from __future__ import annotations

import os
import re
import subprocess

from tests.servers import ROOT, free_port

DEMO = ROOT / "scripts" / "demo.sh"


def test_demo_runs_the_examples_and_cleans_up():
    # Given a free port for the site and no fill-mask checkpoint (a fresh machine)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FILL_MASK_CHECKPOINT"}
    env["DEMO_PORT"] = str(port)

    # When the demo runs with --exit-after
    done = subprocess.run(
        ["bash", str(DEMO), "--exit-after"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    out = done.stdout

    # Then it succeeded, said where to open the site, and showed each answer
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert f"open        http://127.0.0.1:{port}/" in out
    assert "ranked by similarity to 'How do I bake bread at home?'" in out
    assert re.search(r"  0\.\d{3}  The stock market fell sharply on Monday\.\n\n", out)  # ranked last
    assert "2 embeddings of 384 floats" in out
    assert "HTTP 503: fill-mask is not configured: set FILL_MASK_CHECKPOINT" in out
    assert 'HTTP 400: "texts" is empty; send at least one text' in out

    # ... and every process it started is gone
    (pids,) = re.findall(r"stopped the demo's processes \(([\d ]+)\)", out)
    assert len(pids.split()) == 3
    for pid in map(int, pids.split()):
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} from demo.sh is still running"


def test_demo_rejects_an_unknown_option():
    done = subprocess.run(["bash", str(DEMO), "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown option '--bogus'; the only option is --exit-after" in done.stderr
