"""The single-file app (scripts/build_pyz.py), run as a user on an
air-gapped host runs it: `python3 -I -S llmrouter.pyz ...`, with no
site-packages at all, so everything it imports comes from the archive."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpcore
import pytest

from fakes import FakeUpstream
from test_watch import Lines
from tlscerts import make_test_ca

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 1_500_000  # bytes
RUNTIME = {"llmrouter", "h11", "anyio", "httpcore", "certifi", "idna", "typing_extensions", "sniffio", "tomli", "exceptiongroup"}


class Built:
    def __init__(self, path: Path, output: str) -> None:
        self.path = path
        self.output = output
        self.min_minor = int(re.search(r"runs on Python >= 3\.(\d+)", output).group(1))

    def run(self, *args: str, python: str = sys.executable, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-I", "-S", str(self.path), *args], cwd=cwd, env=bare_env(),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str, cwd: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-I", "-S", str(self.path), *args], cwd=cwd, env=bare_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def bare_env() -> dict[str, str]:
    # What a fresh login on the target host has; -I drops PYTHON* variables anyway.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def build(out: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_pyz.py"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Built:
    out = tmp_path_factory.mktemp("pyz") / "llmrouter.pyz"
    return Built(out, build(out))


def test_the_build_is_reproducible_and_reports_size_and_sha256(pyz, tmp_path):
    data = pyz.path.read_bytes()
    assert len(data) < BUDGET
    assert f"{len(data):,} bytes" in pyz.output
    assert f"{hashlib.sha256(data).hexdigest()}  {pyz.path}" in pyz.output
    again = tmp_path / "again.pyz"
    build(again)
    assert again.read_bytes() == data
    assert data.startswith(b"#!/usr/bin/env python3\n") and os.access(pyz.path, os.X_OK)


def test_the_archive_holds_only_the_package_and_its_runtime_dependencies(pyz):
    archive = zipfile.ZipFile(pyz.path)
    names = archive.namelist()
    modules = {n.split("/")[0].removesuffix(".py") for n in names if ".dist-info/" not in n} - {"__main__"}
    assert {"llmrouter", "h11", "anyio", "httpcore", "certifi"} <= modules <= RUNTIME
    infos = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert {i.split("-")[0].lower() for i in infos} == modules - {"llmrouter"}
    for info in infos:  # each dependency: its headers and its license
        assert f"{info}/METADATA" in names
        assert any(re.search(r"/(licenses/)?(LICEN[CS]E|COPYING)", n) for n in names if n.startswith(info + "/")), info
    assert not [n for n in names if n.endswith((".pyc", ".pth", ".so", ".pyi")) or "__pycache__" in n or "/tests/" in n]
    package = sorted(n for n in names if n.startswith("llmrouter/"))
    tracked = subprocess.run(["git", "ls-files", "llmrouter"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert package == sorted(tracked)  # the package and its data (toml, html), nothing else
    assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_version_names_dependencies_python_and_the_single_file(pyz):
    result = pyz.run("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "llmrouter 0.1.0"
    assert re.fullmatch(r"h11 [\d.]+, anyio [\d.]+, httpcore [\d.]+, certifi [\d.]+", lines[1])
    assert lines[2].startswith(f"Python {sys.version.split()[0]} ")
    assert lines[3] == f"running from the single file {pyz.path} (zipapp)"


def test_check_serve_tls_and_watch_from_the_single_file(pyz, tmp_path):
    """A plain and an https upstream (signed by a private CA, trusted through
    ca_bundle): `check` reads the config, the router answers through both,
    and `watch` prints what happened, all from the archive alone."""
    ca = make_test_ca(tmp_path)
    with FakeUpstream() as plain, ca.upstream() as tls:
        (tmp_path / "config.toml").write_text(
            '[server]\nport = 0\n[logging]\nenabled = true\npath = "requests.jsonl"\n'
            f'[[providers]]\nname = "local"\nformat = "openai"\nbase_url = "{plain.url}/v1"\n'
            f'[[providers]]\nname = "corp"\nformat = "openai"\nbase_url = "{tls.url}/v1"\nca_bundle = "ca.pem"\n'
            '[[routers]]\ntype = "prefix"\nmodel_prefix = "corp/"\nprovider = "corp"\nstrip_prefix = true\n'
            '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "local"\n'
        )
        checked = pyz.run("check", cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
        assert f"also trusts the CAs in {tmp_path / 'ca.pem'}" in checked.stdout

        router = pyz.popen("serve", "config.toml", cwd=tmp_path)
        watch = None
        try:
            url = re.search(r"listening on (http://\S+)", Lines(router.stderr).until(lambda l: "listening on" in l)).group(1)
            watch = pyz.popen("watch", "--json", url, cwd=tmp_path)
            Lines(watch.stderr).until(lambda l: l.startswith("connected"))
            with httpcore.ConnectionPool() as pool:
                for model, text in (("m", "over plain http"), ("corp/m", "over a re-signed tls")):
                    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
                    response = pool.request("POST", url + "/v1/chat/completions", headers={"content-type": "application/json"}, content=body)
                    assert response.status == 200, response.content
                    assert json.loads(response.content)["choices"][0]["message"]["content"] == f"echo: {text}"
            out = Lines(watch.stdout)
            completes = [json.loads(out.until(lambda l: '"complete"' in l)) for _ in range(2)]
            assert [(c["provider"], c["status"]) for c in completes] == [("local", 200), ("corp", 200)]
        finally:
            for proc in (watch, router):
                if proc is not None:
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(10) == 0
        assert b"Traceback" not in router.stderr.read()
        assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 2


def find_python(version: str) -> str | None:
    """A working interpreter of that version: on PATH, or one pyenv installed
    but did not put on PATH (its shim then refuses to run)."""
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in (shutil.which(f"python{version}"), *sorted(map(str, home.glob(f"versions/{version}.*/bin/python{version}")))):
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def test_python_3_10_runs_it_or_is_told_what_it_needs(pyz, tmp_path):
    """The oldest supported Python: it runs the archive when the builder had
    tomli and exceptiongroup installed, and otherwise gets one clear line."""
    python310 = find_python("3.10")
    if python310 is None:
        if os.environ.get("CI") == "true":
            pytest.fail("python3.10 is not installed")
        pytest.skip("python3.10 is not installed")
    result = pyz.run("--version", python=python310)
    if pyz.min_minor > 10:
        assert result.returncode == 1
        assert result.stderr.startswith(f"llmrouter: this file needs Python 3.{pyz.min_minor} or newer (this is 3.10")
        return
    assert result.returncode == 0, result.stderr
    assert re.search(r"tomli [\d.]+", result.stdout)
    checked = pyz.run("check", python=python310, cwd=tmp_path)
    assert checked.returncode == 0 and "<built-in default>" in checked.stdout, checked.stderr


def builder():
    spec = importlib.util.spec_from_file_location("build_pyz", ROOT / "scripts" / "build_pyz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_builder_reads_requirements_versions_and_markers():
    b = builder()
    assert b.parse_requirement("tomli>=2; python_version < '3.11'") == ("tomli", ">=2", "python_version < '3.11'")
    assert b.parse_requirement("Typing_Extensions (>=4.5)") == ("typing-extensions", ">=4.5", None)
    assert b.version_matches("1.0.9", ">=1.0.9,<2") and not b.version_matches("0.14.0", ">=0.16")
    assert b.version_matches("4.16.0", "~=4.4") and not b.version_matches("5.0", "~=4.4")
    assert b.version_matches("2.5.0", "==2.*") and b.version_matches("3.10", "<3.11") and not b.version_matches("3.11", "<3.11")
    assert b.marker_holds('python_version < "3.11"', 10) and not b.marker_holds('python_version < "3.11"', 11)
    assert not b.marker_holds('extra == "trio"', 10)
    assert b.marker_holds('(python_version >= "3.12" and extra == "x") or python_version < "3.13"', 12)
    with pytest.raises(b.BuildError, match="unknown marker variable"):
        b.marker_holds('platform_release == "6"', 11)


def test_the_builder_refuses_an_installed_version_outside_a_range():
    b = builder()
    with pytest.raises(b.BuildError, match=r"h11 [\d.]+ is installed, but pyproject.toml requires h11>=99"):
        b.resolve(["h11>=99", "anyio>=4.4"])
    dists, lowest, _ = b.resolve(["httpcore>=1.0.9"])
    assert {"httpcore", "h11", "certifi"} <= {b.normalize(d.name) for d in dists} and lowest >= 10


def test_init_from_the_single_file_writes_a_config_it_accepts(pyz, tmp_path):
    from test_watch import free_port

    closed = free_port()
    result = pyz.run("init", *(f"--port={key}={closed}" for key in ("llama.cpp", "ollama", "vllm", "lmstudio")), cwd=tmp_path)
    assert result.returncode == 0 and "wrote config.toml" in result.stdout, result.stderr
    assert (tmp_path / "config.toml").read_text().startswith("# llmrouter configuration, written by `llmrouter init`")
    checked = pyz.run("check", cwd=tmp_path)
    assert checked.returncode == 0 and "config: config.toml" in checked.stdout, checked.stderr
