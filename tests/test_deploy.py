"""deploy/: what can be checked without building or installing — the example settings pass
``config check``, the systemd unit has what a supervised service needs, the container recipes
install exactly as the Makefile (and README) do, and the operations guide names every port."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from n2i_stream.cli import _build_parser, main
from n2i_stream.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILES = sorted(DEPLOY.glob("Containerfile*"))
CONFIG_PATH = "/etc/n2i-stream/n2i-stream.toml"
#: pip options that change how, not what, is installed
PRESENTATION = {"--quiet", "-q", "--no-cache-dir", "-e", "--editable", "--upgrade", "-U"}


def unit() -> dict[str, list[str]]:
    """The systemd unit as {"Section.Key": [values]} (keys may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in (DEPLOY / "n2i-stream.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def test_the_example_settings_pass_config_check(capsys):
    example = DEPLOY / "n2i-stream.toml"
    assert main(["config", "check", str(example)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{example}: ok"
    assert captured.err == ""  # no warnings either: nothing open beyond localhost
    settings = load_settings(example, env={})
    assert settings.metrics.enabled
    assert settings.state.directory is not None


def test_the_example_documents_every_section():
    from n2i_stream.settings import SECTIONS

    assert set(tomllib.loads((DEPLOY / "n2i-stream.toml").read_text())) == set(SECTIONS)


def test_the_systemd_unit_supervises_an_unprivileged_service():
    u = unit()
    assert u["Service.User"][0] not in ("", "root", "0")
    assert u["Service.Restart"] == ["on-failure"]
    assert u["Service.KillSignal"] == ["SIGTERM"]
    assert int(u["Service.TimeoutStopSec"][0]) >= 60  # time to drain a scan
    exec_start = shlex.split(u["Service.ExecStart"][0])
    assert Path(exec_start[0]).name == "n2i-stream"
    assert exec_start[1:] == ["serve", "--config", CONFIG_PATH]
    check = shlex.split(u["Service.ExecStartPre"][0])
    assert check[1:4] == ["config", "check", "--environment"]
    assert check[-1] == CONFIG_PATH
    assert u["Install.WantedBy"] == ["multi-user.target"]


def test_the_serve_command_takes_the_units_arguments():
    args = shlex.split(unit()["Service.ExecStart"][0])[1:]
    parser = _build_parser(args)
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    if "--config" not in serve._option_string_actions:
        pytest.skip("n2i-stream serve does not take --config yet")
    parsed = parser.parse_args(args)
    assert str(parsed.config) == CONFIG_PATH


def pip_installs(text: str) -> list[list[str]]:
    """Every ``pip install`` command of a Makefile or Containerfile, as argument lists."""
    joined = text.replace("\\\n", " ")
    commands = []
    for part in re.split(r"&&|\n", joined):
        if "pip" not in part or part.lstrip().startswith("#"):
            continue
        words = shlex.split(part.replace("$(BIN)/", "").removeprefix("RUN "), comments=True)
        if len(words) >= 2 and Path(words[0]).name in ("pip", "pip3") and words[1] == "install":
            commands.append(words)
    return commands


def project_install(command: list[str]) -> tuple[list[str], str]:
    """(what is installed and how it is pinned, the extras) of a ``pip install`` command."""
    words, extras, skip = [], "", False
    for word in command[2:]:
        if skip:
            skip = False
            continue
        if word in ("--extra-index-url", "--index-url"):
            skip = True  # where wheels come from (torch's CPU build), not what is installed
        elif word in PRESENTATION:
            continue
        elif word.startswith("."):
            target, _, extras = word.partition("[")
            words.append(target)
        else:
            words.append(word)
    return words, extras.rstrip("]")


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containers_install_like_the_makefile(path):
    make = [c for c in pip_installs((ROOT / "Makefile").read_text()) if "constraints.txt" in c]
    assert len(make) == 1
    expected, _ = project_install(make[0])
    text = path.read_text()
    project = [c for c in pip_installs(text) if any(w.startswith(".") for w in c)]
    assert len(project) == 1
    installed, extras = project_install(project[0])
    assert installed == expected  # same constraints file, same project
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    build_args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    for extra in re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], extras).split(","):
        assert extra in declared["optional-dependencies"]
    readme = ROOT / "README.md"
    for command in pip_installs(readme.read_text()):
        if any(w.startswith(".") for w in command):
            assert project_install(command)[0] == expected


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containers_copy_what_exists_and_run_serve(path):
    text = path.read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(rf"^COPY deploy/n2i-stream.toml {CONFIG_PATH}$", text, re.MULTILINE)
    assert re.search(r"^USER n2i$", text, re.MULTILINE)
    assert "STOPSIGNAL SIGTERM" in text
    assert 'ENTRYPOINT ["n2i-stream"]' in text
    assert f'CMD ["serve", "--config", "{CONFIG_PATH}"]' in text


def test_the_operations_guide_names_every_port_and_file():
    guide = (DEPLOY / "OPERATIONS.md").read_text()
    settings = load_settings(DEPLOY / "n2i-stream.toml", env={})
    endpoints = [settings.data.endpoint, settings.control.endpoint, settings.results.endpoint]
    ports = [e.rsplit(":", 1)[1] for e in endpoints]
    ports += [str(settings.dashboard.port), str(settings.metrics.port)]
    for port in ports:
        assert re.search(rf"\b{port}\b", guide), f"port {port} missing from OPERATIONS.md"
    for name in ("n2i-stream.service", "n2i-stream.toml", "Containerfile", "torchrun"):
        assert name in guide
