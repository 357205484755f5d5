"""The documentation site builds without the network, and serves nothing from it.

``scripts/test.sh`` builds the site too; this test adds what a plain build
cannot show: that it needs no network (run in a network namespace of its own
where the machine allows one), that the pages it makes load no fonts or
scripts from elsewhere, and that every API page shows the package's members.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import ROOT

MKDOCS = Path(sys.executable).parent / "mkdocs"
API_PACKAGES = ("client", "worker", "engine", "deploy", "models", "protocol", "errors")


def offline_prefix() -> list[str]:
    """``unshare -n`` (a network namespace with only a down loopback) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: scripts/setup.sh installs the docs extra")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [*offline_prefix(), str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
        timeout=180,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_no_page_loads_anything_from_another_host(site):
    remote = [
        f"{page.relative_to(site)}: {match}"
        for page in site.rglob("*.html")
        for match in re.findall(r'<(?:link|script|img)[^>]+(?:href|src)="(?:https?:)?//[^"]+', page.read_text())
    ]
    assert not remote, remote


def test_every_page_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(entries) -> list[str]:
        found = []
        for entry in entries:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                found += pages(value) if isinstance(value, list) else [value]
        return found

    listed = set(pages(config["nav"]))
    written = {str(page.relative_to(ROOT / "docs")) for page in (ROOT / "docs").rglob("*.md")}
    assert written == listed


@pytest.mark.parametrize("package", API_PACKAGES)
def test_each_api_page_documents_its_package(site, package):
    html = (site / "api" / package / "index.html").read_text()
    members = set(re.findall(rf'id="(celery_batching\.{package}\.[\w.]+)"', html))
    assert members, f"the API page of celery_batching.{package} shows no members"
    # (scripts/docs_roles.py turns the docstrings' reST roles into inline code)
    assert not re.search(r":(class|meth|func|mod|attr|exc):", html)
