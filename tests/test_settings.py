"""The service settings file: defaults, validation naming file and key, environment and
command-line overrides, round trip through ``config show``, and the ``config`` command."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from n2i_stream import ConfigError
from n2i_stream.cli import main
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.service.scan_config import ScanConfig
from n2i_stream.settings import (
    PipelineSettings,
    ServiceSettings,
    environment_problems,
    load_settings,
    parse_value,
    settings_warnings,
    to_toml,
)

GOOD = """
[data]
endpoint = "tcp://127.0.0.1:6000"
socket_type = "sub"
bind = false

[pipeline]
overload = "drop_oldest"
queue_steps = 6

[devices]
device = "cpu"
train_threads = 2

[scan_defaults]
network = "dncnn"
train_minutes = 2.5
center_offset = "auto"

[scan_defaults.training]
crop = 32

[output]
directory = "results"
write_by_default = true

[metrics]
enabled = true
port = 9100

[logging]
format = "json"

[state]
directory = "state"
"""


def write(tmp_path: Path, text: str, name: str = "n2i.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_bind_every_socket_to_localhost():
    s = load_settings(env={})
    assert s == ServiceSettings()
    for endpoint in (s.data.endpoint, s.control.endpoint, s.results.endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:")
    assert s.dashboard.host == s.metrics.host == "127.0.0.1"
    assert not s.curve_sockets
    assert settings_warnings(s) == []


def test_a_good_file_loads_with_relative_paths_beside_it(tmp_path):
    s = load_settings(write(tmp_path, GOOD), env={})
    assert s.source == str(tmp_path / "n2i.toml")
    assert (s.data.socket_type, s.data.bind, s.data.buffers) == ("sub", False, 64)
    assert s.metrics.enabled
    assert s.metrics.port == 9100
    assert s.output.directory == str(tmp_path / "results")
    assert s.state.directory == str(tmp_path / "state")
    options = s.pipeline_options()
    assert isinstance(options, PipelineOptions)
    assert (options.overload, options.queue_steps, options.train_threads) == ("drop_oldest", 6, 2)


def test_every_problem_is_reported_at_once_with_file_section_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        [data]
        endpont = "tcp://127.0.0.1:1"
        [metrics]
        port = 70000
        [pipeline]
        queue_steps = "four"
        [scan_defaults]
        filter = "gauss"
        [dashbord]
        port = 1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"5 problems in {path}")
    for part in (
        f"{path} [data]: invalid DataSettings: unknown key 'endpont'",
        f"{path} [metrics]: invalid MetricsSettings: port: expected 0..65535, got 70000",
        f"{path} [pipeline]: invalid PipelineSettings: 'queue_steps': expected an integer",
        f"{path} [scan_defaults]",
        "filter: expected one of",
        f"{path}: unknown section [dashbord]",
    ):
        assert part in message


def test_syntax_errors_and_missing_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"n2i.toml: not valid TOML: .*line 2"):
        load_settings(write(tmp_path, "[data]\nendpoint = \n"), env={})
    with pytest.raises(ConfigError, match=r"nowhere.toml: no such configuration file"):
        load_settings(tmp_path / "nowhere.toml", env={})


def test_environment_overrides_the_file_and_options_override_both(tmp_path):
    path = write(tmp_path, GOOD)
    env = {
        "N2I_STREAM__METRICS__PORT": "9200",
        "N2I_STREAM__DATA__ENDPOINT": "tcp://10.0.0.5:7000",
        "N2I_STREAM__SCAN_DEFAULTS__TRAINING__LR": "1e-4",
        "N2I_STREAM__OUTPUT__DIRECTORY": "elsewhere",
        "N2I_STREAM__SCAN_DEFAULTS__TRAIN_MINUTES": "null",
        "UNRELATED": "x",
    }
    s = load_settings(path, env=env, overrides={"metrics.port": 9300})
    assert s.metrics.port == 9300
    assert s.data.endpoint == "tcp://10.0.0.5:7000"
    assert s.scan_defaults.training.lr == pytest.approx(1e-4)
    assert s.scan_defaults.training.crop == 32
    assert s.scan_defaults.train_minutes is None
    assert s.output.directory == "elsewhere"  # not from the file: relative to the working dir
    # the file comes from $N2I_STREAM_CONFIG when no path is given
    assert load_settings(env={"N2I_STREAM_CONFIG": str(path)}).metrics.port == 9100


def test_bad_overrides_name_the_variable_or_option(tmp_path):
    env = {"N2I_STREAM__METRICS__PORT": "many", "N2I_STREAM__NOPE__X": "1"}
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD), env=env, overrides={"control.endpoint": "5560"})
    message = str(info.value)
    assert (
        "(with environment N2I_STREAM__METRICS__PORT): invalid MetricsSettings: 'port'" in message
    )
    assert "environment N2I_STREAM__NOPE__X: unknown section [nope]" in message
    assert "(with override control.endpoint): invalid ControlSettings: endpoint" in message


def test_values_from_text_are_toml_values_or_strings():
    assert parse_value("9100") == 9100
    assert parse_value("false") is False
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("tcp://127.0.0.1:5") == "tcp://127.0.0.1:5"
    assert parse_value('"quoted"') == "quoted"
    assert parse_value("null") is None


def test_curve_needs_a_key_and_open_binds_are_warned_about(tmp_path):
    with pytest.raises(ConfigError, match=r"\[security\] server_secret_key: required"):
        load_settings(env={}, overrides={"control.curve": True})
    s = load_settings(env={}, overrides={"control.endpoint": "tcp://0.0.0.0:5560"})
    assert any("[control] endpoint tcp://0.0.0.0:5560" in w for w in settings_warnings(s))
    s = load_settings(
        env={},
        overrides={"control.curve": True, "security.server_secret_key": str(tmp_path / "k")},
    )
    assert any("cannot be read" in p for p in environment_problems(s))


def test_scan_defaults_fill_what_a_request_leaves_out(tmp_path):
    s = load_settings(write(tmp_path, GOOD), env={})
    request = {
        "scan_id": "s1", "rows": 2, "cols": 16, "frames_per_step": 4, "steps": 6,
        "angle_step": 45.0, "network": "unet", "training": {"batch": 2},
    }  # fmt: skip
    scan = ScanConfig.from_mapping(s.scan(request))
    assert scan.network == "unet"  # the request wins
    assert scan.train_minutes == 2.5
    assert scan.center_offset == "auto"
    assert (scan.training.crop, scan.training.batch) == (32, 2)
    assert scan.output == str(tmp_path / "results" / "s1.h5")
    assert s.scan({**request, "output": "/abs/x.h5"})["output"] == "/abs/x.h5"


def test_pipeline_and_devices_settings_are_every_pipeline_option():
    ours = {f.name for f in dataclasses.fields(PipelineSettings)}
    theirs = {f.name for f in dataclasses.fields(PipelineOptions)}
    assert theirs == ours | {"train_threads", "infer_threads", "fbp_threads"}
    options = load_settings(env={}, overrides={"pipeline.max_backlog": 7}).pipeline_options()
    assert options == PipelineOptions(max_backlog=7)
    with pytest.raises(ConfigError, match=r"\[pipeline\].*max_backlog: expected >= 1"):
        load_settings(env={}, overrides={"pipeline.max_backlog": 0})


def test_show_writes_toml_that_loads_back_equal(tmp_path):
    s = load_settings(write(tmp_path, GOOD), env={})
    again = load_settings(write(tmp_path, to_toml(s), "shown.toml"), env={})
    assert again == s


def test_config_command_checks_shows_and_makes_keys(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"

    bad = write(tmp_path, "[metrics]\nport = -1\n", "bad.toml")
    assert main(["config", "check", str(bad)]) == 2
    assert "[metrics]: invalid MetricsSettings: port" in capsys.readouterr().err

    assert main(["config", "show", str(good), "--json", "--set", "metrics.port=1234"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"]["port"] == 1234
    assert shown["data"]["socket_type"] == "sub"

    keys = tmp_path / "keys"
    assert main(["config", "keys", str(keys), "--client", "bluesky"]) == 0
    capsys.readouterr()
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    assert (keys / "authorized" / "bluesky.key").exists()
    assert main(["config", "keys", str(keys)]) == 2  # never replaces keys silently
    assert "keys exist already" in capsys.readouterr().err

    secured = {
        "control.curve": True,
        "security.server_secret_key": str(keys / "server.key_secret"),
        "security.authorized_keys": str(keys / "authorized"),
    }
    sets = [arg for k, v in secured.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    assert main(["config", "check", "--environment", str(good), *sets]) == 0
