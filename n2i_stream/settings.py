"""The service configuration file: one TOML file, overridable by environment and command line.

Everything ``n2i-stream serve`` needs, one table per concern::

    [data]           the frame socket (ZmqSourceConfig keys, plus curve)
    [control]        the control socket (REQ/DEALER clients)
    [results]        the results PUB socket (ZmqSinkConfig keys, plus curve)
    [pipeline]       queues and overload policy of every scan's pipeline
    [devices]        where torch runs and with how many threads
    [scan_defaults]  scan settings a ``configure`` request may leave out
    [output]         where results files go
    [dashboard]      the read-only web page (DashboardConfig keys, plus enabled)
    [metrics]        Prometheus metrics and /healthz
    [logging]        level, text or JSON lines, file
    [security]       ZeroMQ CURVE key files
    [state]          the per-scan state kept for restarts
    [registry]       trained models kept for later scans
    [slabs]          slab workers for reconstruction and denoising

Precedence, lowest first: built-in defaults, the file, the environment
(``N2I_STREAM__SECTION__KEY=value``, e.g. ``N2I_STREAM__METRICS__PORT=9100``; values are read as
TOML values where they parse as one, else as strings; ``null`` unsets), then explicit overrides
(``--set section.key=value`` on the command line). Every value is validated when the settings
are loaded; all problems are reported together, each naming the file (or variable) and the key.
Relative paths in the file are taken relative to the file's directory. Every socket binds to
127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import from_mapping, to_mapping
from .errors import ConfigError
from .io.dashboard.server import DashboardConfig
from .io.zmq_sink import ZmqSinkConfig
from .io.zmq_source import ZmqSourceConfig

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ControlSettings",
    "DashboardSettings",
    "DataSettings",
    "DevicesSettings",
    "LoggingSettings",
    "MetricsSettings",
    "OutputSettings",
    "PipelineSettings",
    "RegistrySettings",
    "ResultsSettings",
    "ScanDefaults",
    "SecuritySettings",
    "ServiceSettings",
    "SlabSettings",
    "StateSettings",
    "environment_problems",
    "load_settings",
    "parse_value",
    "settings_warnings",
    "to_toml",
]

#: environment variables ``N2I_STREAM__SECTION__KEY`` override single keys
ENV_PREFIX = "N2I_STREAM__"
#: environment variable naming the configuration file when no path is given
CONFIG_ENV = "N2I_STREAM_CONFIG"

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def _endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint (None for other transports)."""
    transport, _, address = endpoint.partition("://")
    if transport != "tcp":
        return None
    host, _, _ = address.rpartition(":")
    return host


@dataclass(frozen=True)
class DataSettings(ZmqSourceConfig):
    """The frame socket: every :class:`~n2i_stream.io.zmq_source.ZmqSourceConfig` key."""

    endpoint: str = "tcp://127.0.0.1:5555"  # where detectors PUSH (bind) or the detector (connect)
    bind: bool = True  # the service is the fixed end; detectors connect to it
    buffers: int = 64  # frames queued or held at most
    curve: bool = False  # require ZeroMQ CURVE ([security]) from the detector


@dataclass(frozen=True)
class ControlSettings:
    """The control socket (ROUTER): JSON requests from plans, CLI tools and tests."""

    endpoint: str = "tcp://127.0.0.1:5560"  # bound; clients connect
    curve: bool = False  # require ZeroMQ CURVE ([security]) from clients

    def __post_init__(self) -> None:
        if "://" not in self.endpoint:
            raise ConfigError(f"endpoint: expected 'transport://address', got {self.endpoint!r}")


@dataclass(frozen=True)
class ResultsSettings(ZmqSinkConfig):
    """The results PUB socket: every :class:`~n2i_stream.io.zmq_sink.ZmqSinkConfig` key."""

    endpoint: str = "tcp://127.0.0.1:5561"  # bound; subscribers connect
    curve: bool = False  # require ZeroMQ CURVE ([security]) from subscribers


#: PipelineOptions keys that live in [devices] rather than [pipeline]
DEVICE_KEYS = ("train_threads", "infer_threads", "fbp_threads")


def _pipeline_options(self: Any, devices: DevicesSettings) -> Any:
    """The :class:`~n2i_stream.service.pipeline.PipelineOptions` for these settings."""
    from .service.pipeline import PipelineOptions

    return PipelineOptions(
        **dataclasses.asdict(self), **{key: getattr(devices, key) for key in DEVICE_KEYS}
    )


def _check_pipeline(self: Any) -> None:
    _pipeline_options(self, DevicesSettings())  # the pipeline's own checks, at load time


def _pipeline_settings() -> type:
    """[pipeline]: every PipelineOptions key but the threads (in [devices]), with its type and
    default taken from PipelineOptions itself, so the two never drift apart."""
    from .service.pipeline import PipelineOptions

    hints = typing.get_type_hints(PipelineOptions)
    cls = dataclasses.make_dataclass(
        "PipelineSettings",
        [
            (f.name, hints[f.name], field(default=f.default))
            for f in dataclasses.fields(PipelineOptions)
            if f.name not in DEVICE_KEYS
        ],
        frozen=True,
        namespace={
            "__doc__": "How every scan's pipeline queues work (service.pipeline.PipelineOptions).",
            "__post_init__": _check_pipeline,
            "options": _pipeline_options,
        },
    )
    cls.__module__ = __name__
    return cls


@dataclass(frozen=True)
class DevicesSettings:
    """Where the networks run and how many CPU threads torch may use."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU
    train_threads: int = 1  # torch threads for training (leave cores to ingest and FBP)
    infer_threads: int = 0  # torch threads for denoising (0: every core)
    fbp_threads: int = 0  # numba threads for each step's FBP (0: numba's default)

    def __post_init__(self) -> None:
        counts = [getattr(self, key) for key in DEVICE_KEYS]
        if min(counts) < 0:
            raise ConfigError(
                f"{', '.join(DEVICE_KEYS)}: expected >= 0 (0: every core), got {counts}"
            )


PipelineSettings = _pipeline_settings()


@dataclass(frozen=True)
class TrainingDefaults:
    """Network and optimiser defaults (the scan's ``training`` table); unset keys stay unset."""

    depth: int | None = None
    width: int | None = None
    context: int | None = None
    crop: int | None = None
    batch: int | None = None
    lr: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ScanDefaults:
    """Scan keys a ``configure`` request may leave out; unset keys keep ScanConfig's default."""

    network: Literal["unet", "msd", "dncnn"] | None = None  # denoising network
    train_minutes: float | None = None  # training time budget
    train_iterations: int | None = None  # training step budget
    train_steps: int | None = None  # K, the steps before the sample changes
    filter: str | None = None  # FBP ramp filter window
    oversample: int | None = None  # FBP samples per detector column
    keep_low: float | None = None  # denoised: the FBP's scales coarser than this, px (0: off)
    center_offset: float | Literal["auto"] | None = None  # rotation axis offset, px, or "auto"
    close_lag: int | None = None  # a step missing frames is closed this many steps later
    end_after_idle_s: float | None = None  # no frame for this long: the scan ends (unset: waits)
    publish: Literal["volume"] | tuple[int, ...] | None = None  # whole volumes or z-slices
    training: TrainingDefaults = field(default_factory=TrainingDefaults)

    def __post_init__(self) -> None:
        # Checked by the scan configuration itself, on the smallest scan they fit.
        from .service.scan_config import ScanConfig

        steps = max(self.train_steps or 0, 4) + 1  # room for any valid K (default 4)
        rows = max(self.publish) + 1 if isinstance(self.publish, tuple) and self.publish else 1
        probe = {"scan_id": "defaults", "rows": rows, "cols": 16, "frames_per_step": 2}
        ScanConfig.from_mapping(
            self.apply({**probe, "steps": steps, "angle_step": 1.0}), source="scan_defaults"
        )

    def mapping(self) -> dict[str, Any]:
        """The defaults that are set, as scan keys (``training`` only with its set keys)."""
        out = {k: v for k, v in to_mapping(self).items() if v is not None and k != "training"}
        training = {k: v for k, v in to_mapping(self.training).items() if v is not None}
        if training:
            out["training"] = training
        return out

    def apply(self, scan: Mapping[str, Any]) -> dict[str, Any]:
        """``scan`` (a configure request's plain data) with the unset keys filled in."""
        defaults = self.mapping()
        merged = {**defaults, **scan}
        if "training" in defaults and isinstance(scan.get("training"), Mapping):
            merged["training"] = {**defaults["training"], **scan["training"]}
        return merged


@dataclass(frozen=True)
class OutputSettings:
    """Where results files go."""

    directory: str | None = None  # relative scan ``output`` paths are taken from here
    write_by_default: bool = False  # a scan naming no output is written to DIRECTORY/SCAN_ID.h5

    def __post_init__(self) -> None:
        if self.write_by_default and self.directory is None:
            raise ConfigError("write_by_default: needs a directory")

    def resolve(self, scan: Mapping[str, Any]) -> dict[str, Any]:
        """``scan`` with its ``output`` placed in the directory (relative or defaulted names)."""
        out = dict(scan)
        name = out.get("output")
        if name is None and self.write_by_default:
            name = f"{out.get('scan_id', 'scan')}.h5"
        if not isinstance(name, str):  # None, or not a name: the scan's own check reports it
            return out
        if self.directory is not None and not Path(name).is_absolute():
            name = str(Path(self.directory) / name)
        out["output"] = name
        return out


@dataclass(frozen=True)
class DashboardSettings(DashboardConfig):
    """The read-only web page: every :class:`~n2i_stream.io.dashboard.DashboardConfig` key."""

    enabled: bool = False  # serve the dashboard


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics (``/metrics``) and a health check (``/healthz``) on one HTTP port."""

    enabled: bool = False  # needs the "metrics" extra (prometheus-client)
    host: str = "127.0.0.1"  # interface to bind
    port: int = 9464  # TCP port (0 picks a free one)
    interval_s: float = 1.0  # how often the service status is read
    stale_after_s: float = 10.0  # /healthz fails when the status is older than this

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port: expected 0..65535, got {self.port}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            problems.append(f"interval_s: expected > 0, got {self.interval_s}")
        if not self.stale_after_s > self.interval_s:
            problems.append(
                f"stale_after_s: expected more than interval_s ({self.interval_s}), got "
                f"{self.stale_after_s}"
            )
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class LoggingSettings:
    """Log records: one line per event, as text or JSON."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"  # json: one JSON object per line
    file: str | None = None  # append to this file instead of standard error (journald)


@dataclass(frozen=True)
class SecuritySettings:
    """ZeroMQ CURVE keys for the sockets whose ``curve`` is true (``n2i-stream config keys``)."""

    server_secret_key: str | None = None  # the service's key pair (a zmq.auth .key_secret file)
    authorized_keys: str | None = None  # directory of client public keys (.key) allowed in;
    # unset: any client holding the server's public key gets in


@dataclass(frozen=True)
class StateSettings:
    """Per-scan state kept on disk so that a restarted service resumes an unfinished scan."""

    directory: str | None = None  # unset: no state kept, no resuming
    resume: bool = True  # resume the unfinished scan found at start


@dataclass(frozen=True)
class RegistrySettings:
    """Trained models kept for later scans, keyed by geometry, detector and energy."""

    directory: str | None = None  # unset: no registry
    detector: str = ""  # this instrument's detector, part of every model's key
    register: bool = True  # store every model trained here


@dataclass(frozen=True)
class SlabSettings:
    """Reconstruction and denoising split into slabs of slices over worker processes."""

    workers: int = 0  # 0: in the service process
    tasks: str = "tcp://127.0.0.1:5570"  # PUSH: slabs out to the workers
    results: str = "tcp://127.0.0.1:5571"  # PULL: slabs back from the workers
    spawn: bool = True  # start the workers here (false: they run elsewhere and connect)

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 0:
            problems.append(f"workers: expected >= 0, got {self.workers}")
        for name in ("tasks", "results"):
            if "://" not in getattr(self, name):
                problems.append(f"{name}: expected 'transport://address'")
        if problems:
            raise ConfigError("; ".join(problems))


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "control": ControlSettings,
    "results": ResultsSettings,
    "pipeline": PipelineSettings,
    "devices": DevicesSettings,
    "scan_defaults": ScanDefaults,
    "output": OutputSettings,
    "dashboard": DashboardSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
    "security": SecuritySettings,
    "state": StateSettings,
    "registry": RegistrySettings,
    "slabs": SlabSettings,
}

#: (section, key) of the settings that are file or directory paths
PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("output", "directory"),
    ("logging", "file"),
    ("security", "server_secret_key"),
    ("security", "authorized_keys"),
    ("state", "directory"),
    ("registry", "directory"),
)


@dataclass(frozen=True)
class ServiceSettings:
    """Every setting of the service; build with :func:`load_settings`."""

    data: DataSettings = field(default_factory=DataSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)  # type: ignore[valid-type]
    devices: DevicesSettings = field(default_factory=DevicesSettings)
    scan_defaults: ScanDefaults = field(default_factory=ScanDefaults)
    output: OutputSettings = field(default_factory=OutputSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    state: StateSettings = field(default_factory=StateSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    slabs: SlabSettings = field(default_factory=SlabSettings)
    source: str = field(default="built-in defaults", compare=False)  # where they came from

    def pipeline_options(self) -> Any:
        """The pipeline options every scan runs with."""
        return self.pipeline.options(self.devices)

    def scan(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A configure request's scan with the defaults and the output directory applied."""
        return self.output.resolve(self.scan_defaults.apply(request))

    @property
    def curve_sockets(self) -> tuple[str, ...]:
        """The sockets that require CURVE."""
        return tuple(name for name in ("data", "control", "results") if getattr(self, name).curve)

    def mapping(self) -> dict[str, Any]:
        """Plain data, one table per section (for ``config show`` and logs)."""
        return {name: to_mapping(getattr(self, name)) for name in SECTIONS}


# -- loading -------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A value given as text (environment, ``--set``): a TOML value if it is one, else the
    text itself; ``null`` (or ``none``) unsets."""
    if text.strip().lower() in ("null", "none"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[keys[-1]] = value


def _overrides(
    items: Mapping[str, Any], origin: Any
) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list[str]]:
    """Nested tables from ``{dotted key: value}``, each key's origin, and malformed keys."""
    tree: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    problems = []
    for dotted, value in items.items():
        keys = [k for k in dotted.split(".") if k]
        if len(keys) < 2:
            problems.append(f"{origin(dotted)}: expected SECTION.KEY, got {dotted!r}")
            continue
        _set(tree, keys, value)
        origins[tuple(keys)] = origin(dotted)
    return tree, origins, problems


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list]:
    items = {
        ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__")): (name, value)
        for name, value in env.items()
        if name.startswith(ENV_PREFIX)
    }
    names = {dotted: name for dotted, (name, _) in items.items()}
    return _overrides(
        {dotted: parse_value(value) for dotted, (_, value) in items.items()},
        lambda dotted: f"environment {names[dotted]}",
    )


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceSettings:
    """Read, merge and validate the service settings.

    ``path``: the TOML file (None: the file named by ``$N2I_STREAM_CONFIG``, else defaults only);
    ``env``: the environment to read ``N2I_STREAM__SECTION__KEY`` overrides from (default
    ``os.environ``); ``overrides``: ``{"section.key": value}`` from the command line, applied
    last. Raises one :class:`ConfigError` listing every problem, each with the file (or the
    variable or option) and the key.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    file = Path(path) if path is not None else None
    source = str(file) if file is not None else "built-in defaults"
    data = _read_file(file) if file is not None else {}
    env_tree, origins, problems = _from_env(env)
    cli_tree, cli_origins, cli_problems = _overrides(
        overrides or {}, lambda dotted: f"override {dotted}"
    )
    origins.update(cli_origins)
    problems += cli_problems
    merged = _merge(_merge(data, env_tree), cli_tree)
    sections: dict[str, Any] = {}
    for name in merged:
        if name not in SECTIONS:
            where = sorted({o for k, o in origins.items() if k[0] == name}) or [source]
            problems.append(
                f"{', '.join(where)}: unknown section [{name}] (known: {', '.join(SECTIONS)})"
            )
    for name, cls in SECTIONS.items():
        where = f"{source} [{name}]"
        changed = sorted({o for k, o in origins.items() if k[0] == name})
        if changed:
            where += f" (with {', '.join(changed)})"
        try:
            sections[name] = from_mapping(cls, merged.get(name, {}), source=where)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(_report(source, problems))
    settings = ServiceSettings(**sections, source=source)
    cross = _cross_checks(settings)
    if cross:
        raise ConfigError(_report(source, cross))
    if file is not None:
        settings = _resolve_paths(settings, file.parent, origins)
    return settings


def _report(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in {source}:\n  " + "\n  ".join(problems)


def _cross_checks(s: ServiceSettings) -> list[str]:
    problems = []
    if s.curve_sockets and s.security.server_secret_key is None:
        problems.append(
            f"{s.source} [security] server_secret_key: required, as "
            f"{', '.join(f'[{n}] curve' for n in s.curve_sockets)} is true "
            "(make keys with: n2i-stream config keys DIR)"
        )
    if s.slabs.workers and s.slabs.tasks == s.slabs.results:
        problems.append(f"{s.source} [slabs] tasks and results: must be different endpoints")
    return problems


def _resolve_paths(
    s: ServiceSettings, base: Path, origins: Mapping[tuple[str, ...], str]
) -> ServiceSettings:
    """Relative paths from the file are taken relative to the file's directory."""
    changes: dict[str, dict[str, str]] = {}
    for section, key in PATH_KEYS:
        value = getattr(getattr(s, section), key)
        if value is None or Path(value).is_absolute() or (section, key) in origins:
            continue
        changes.setdefault(section, {})[key] = str(base / value)
    updated = {
        section: dataclasses.replace(getattr(s, section), **values)
        for section, values in changes.items()
    }
    return dataclasses.replace(s, **updated)


# -- checks that need the machine ---------------------------------------------------------------


def settings_warnings(s: ServiceSettings) -> list[str]:
    """Valid but risky choices: sockets open beyond this host without CURVE, and so on."""
    out = []
    for name in ("data", "control", "results"):
        section = getattr(s, name)
        host = _endpoint_host(section.endpoint)
        bound = getattr(section, "bind", True)
        if bound and host is not None and host not in _LOOPBACK and not section.curve:
            out.append(
                f"[{name}] endpoint {section.endpoint} is reachable from other hosts without "
                f"CURVE: set [{name}] curve = true or bind to 127.0.0.1"
            )
    for name in ("dashboard", "metrics"):
        section = getattr(s, name)
        if section.enabled and section.host not in _LOOPBACK:
            out.append(f"[{name}] listens on {section.host}: reachable from other hosts")
    if s.curve_sockets and s.security.authorized_keys is None:
        out.append(
            "[security] authorized_keys is unset: any client holding the server's public key "
            "is let in"
        )
    if s.slabs.workers and not s.slabs.spawn:
        for name in ("tasks", "results"):
            host = _endpoint_host(getattr(s.slabs, name))
            if host in _LOOPBACK:
                out.append(f"[slabs] {name} binds {host} but workers run elsewhere (spawn false)")
    return out


def environment_problems(s: ServiceSettings) -> list[str]:
    """What would stop the service on this machine: missing key files, unwritable directories,
    a missing optional dependency."""
    out = []
    sec = s.security
    if s.curve_sockets:
        if sec.server_secret_key is not None and not os.access(sec.server_secret_key, os.R_OK):
            out.append(f"[security] server_secret_key {sec.server_secret_key}: cannot be read")
        if sec.authorized_keys is not None and not Path(sec.authorized_keys).is_dir():
            out.append(f"[security] authorized_keys {sec.authorized_keys}: not a directory")
    dirs = [
        ("output", "directory", s.output.directory),
        ("state", "directory", s.state.directory),
        ("registry", "directory", s.registry.directory),
        ("logging", "file", None if s.logging.file is None else str(Path(s.logging.file).parent)),
    ]
    for section, key, value in dirs:
        if value is not None and not _writable_dir(Path(value)):
            out.append(f"[{section}] {key} {value}: cannot be created or written")
    if s.metrics.enabled:
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            out.append(
                "[metrics] enabled needs prometheus-client: pip install 'n2i-stream[metrics]'"
            )
    return out


def _writable_dir(path: Path) -> bool:
    """True when ``path`` is a writable directory, or could be created as one."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


# -- writing -------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        import json

        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(s: ServiceSettings) -> str:
    """The settings as a TOML file (unset values as comments); loads back to equal settings."""
    lines = [f"# n2i-stream settings from {s.source}"]

    def table(name: str, values: Mapping[str, Any]) -> None:
        lines.extend(["", f"[{name}]"])
        subtables = []
        for key, value in values.items():
            if isinstance(value, Mapping):
                subtables.append((f"{name}.{key}", value))
            elif value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for sub, values_ in subtables:
            table(sub, values_)

    for name, values in s.mapping().items():
        table(name, values)
    return "\n".join(lines) + "\n"
