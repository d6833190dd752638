"""The ``wg-py-cni`` executable: the thin shell around :mod:`tunnel.cni.spec` and friends.

I/O lives here and only here: reading stdin, the mesh state file and the attachment cache,
exec'ing the delegate plugins found on ``CNI_PATH``, looking into the pod's namespace (``nsenter
--net=CNI_NETNS ip -j ...``) and writing the result or error object to stdout.

Files (each directory overridable, for tests and odd layouts):

- the mesh state: ``<stateDir>/<mesh>.json``; ``stateDir`` from the config, else
  ``$WGPY_MESH_STATE_DIR``, else ``/run/wg-py/mesh``;
- the attachment cache: ``<dataDir>/<network>/<containerID>:<ifname>.json``; ``dataDir`` from the
  config, else ``$WGPY_CNI_DATA_DIR``, else ``/var/lib/cni/wg-py``. ADD writes the delegate's
  config there *before* delegating (so a DEL after a crash or a failed ADD can undo whatever
  the delegate did) and the delegate's result after; DEL, CHECK and GC read it, so DEL works
  when the state file is gone. Writes are atomic (temporary file + rename).

Semantics: ADD refuses (and changes nothing) on a bad config or environment, a missing netns,
no mesh lease or a missing delegate. DEL succeeds when there is nothing to delete. CHECK
checks that the mesh still leases the same subnet, that the runtime's ``prevResult`` holds the
interface and addresses ADD gave, compares the pod namespace with the cached result (the
delegate's own, exact), then runs the delegate's CHECK. STATUS reports 50 without a mesh lease or a delegate.
GC runs the delegate's DEL for every cached attachment not in ``cni.dev/valid-attachments``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunnel.cni import delegate as dg
from tunnel.cni.mesh import DEFAULT_STATE_DIR, STATE_DIR_ENV, MeshState, parse_state
from tunnel.cni.spec import (
    CHECK_FAILED,
    DELEGATE_FAILED,
    DELEGATE_NOT_FOUND,
    IO_FAILURE,
    LATEST,
    LEASE_CHANGED,
    MESH_STATE_INVALID,
    NO_ATTACHMENT,
    NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
    Config,
    Env,
    decode,
    parse_config,
    parse_env,
    valid_attachments,
)

DEFAULT_DATA_DIR = "/var/lib/cni/wg-py"
DATA_DIR_ENV = "WGPY_CNI_DATA_DIR"
DELEGATE_TIMEOUT = 120.0  # seconds; the reference plugins answer in milliseconds
INTERNAL_ERROR = 999


# -- files -----------------------------------------------------------------------------------

def state_path(config: Config, environ: Mapping[str, str]) -> Path:
    return Path(config.state_dir or environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR) / f"{config.mesh}.json"


def read_state(config: Config, environ: Mapping[str, str]) -> MeshState:
    """The node's mesh state; error 11 (try again later) if the agent has not written one."""
    path = state_path(config, environ)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CniError(TRY_AGAIN_LATER, f"this node has no lease on mesh {config.mesh}: {path} does not exist",
                       f"start the mesh agent (wg-py mesh join NETWORK {config.mesh} ...) on this node") from None
    except OSError as exc:
        raise CniError(MESH_STATE_INVALID, f"cannot read the mesh state {path}", str(exc)) from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise CniError(MESH_STATE_INVALID, f"the mesh state {path} is not valid JSON", str(exc)) from exc
    return parse_state(obj, config.mesh)


def cache_dir(config: Config, environ: Mapping[str, str]) -> Path:
    return Path(config.data_dir or environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR) / config.name


def cache_path(config: Config, environ: Mapping[str, str], container_id: str, ifname: str) -> Path:
    return cache_dir(config, environ) / f"{container_id}:{ifname}.json"


def write_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (error 5 on failure)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot write {path}", str(exc)) from exc


def read_cache(path: Path) -> dict[str, Any] | None:
    """A cached attachment, or None if there is none or it is unreadable (said on stderr)."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        print(f"wg-py-cni: ignoring unreadable cache {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("delegate"), dict):
        print(f"wg-py-cni: ignoring malformed cache {path}", file=sys.stderr)
        return None
    return obj


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- delegates -------------------------------------------------------------------------------

def find_plugin(name: str, cni_path: Sequence[str]) -> str:
    """The first executable ``name`` in ``CNI_PATH``; error 101 if there is none."""
    for directory in cni_path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(DELEGATE_NOT_FOUND, f"plugin {name!r} not found on CNI_PATH",
                   f"CNI_PATH={':'.join(cni_path)}; Debian's containernetworking-plugins installs it in /usr/lib/cni")


def find_delegates(conf: Mapping[str, Any], cni_path: Sequence[str]) -> str:
    """The delegate's executable, after checking its IPAM plugin is there too."""
    binary = find_plugin(str(conf["type"]), cni_path)
    ipam = conf.get("ipam") or {}
    if ipam.get("type"):
        find_plugin(str(ipam["type"]), cni_path)
    return binary


def exec_plugin(
    binary: str, command: str, conf: Mapping[str, Any], env: Env, overrides: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """Run a delegate the way a runtime does; its result (None if it printed nothing).

    A failing delegate's error object becomes a :class:`CniError` with the delegate's code and
    a message naming it.
    """
    environ = dict(os.environ)
    environ.update({
        "CNI_COMMAND": command, "CNI_CONTAINERID": env.container_id, "CNI_NETNS": env.netns,
        "CNI_IFNAME": env.ifname, "CNI_PATH": ":".join(env.path),
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in env.args),
    })
    environ.update(overrides or {})
    name = os.path.basename(binary)
    try:
        done = subprocess.run([binary], input=json.dumps(conf).encode(), env=environ, capture_output=True,
                              timeout=DELEGATE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CniError(TRY_AGAIN_LATER, f"{name} {command} did not finish in {DELEGATE_TIMEOUT:.0f}s") from exc
    except OSError as exc:
        raise CniError(DELEGATE_NOT_FOUND, f"cannot run {binary}", str(exc)) from exc
    if done.stderr:
        sys.stderr.write(done.stderr.decode(errors="replace"))
    try:
        out = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        out = None
    if done.returncode != 0:
        if isinstance(out, dict) and isinstance(out.get("code"), int):
            raise CniError(out["code"], f"{name}: {out.get('msg', '')}", str(out.get("details", "")))
        raise CniError(DELEGATE_FAILED, f"{name} {command} failed with status {done.returncode}",
                       (done.stdout + done.stderr).decode(errors="replace")[-2000:])
    if out is not None and not isinstance(out, dict):
        raise CniError(DELEGATE_FAILED, f"{name} {command} printed something that is not a JSON object")
    return out


def delegate_versions(binary: str, env: Env) -> list[str]:
    out = exec_plugin(binary, "VERSION", {"cniVersion": "1.0.0"}, env) or {}
    versions = out.get("supportedVersions")
    return [v for v in versions if isinstance(v, str)] if isinstance(versions, list) else []


def speak_version(config: Config, binary: str, env: Env) -> str:
    """The version to speak to the delegate in (asks it only when ours is 1.1.0)."""
    if config.cni_version != "1.1.0":
        return config.cni_version
    return dg.delegate_version(config.cni_version, delegate_versions(binary, env))


# -- netns inspection ------------------------------------------------------------------------

def in_netns(netns: str, argv: Sequence[str]) -> Any:
    """Run an ``ip -j`` command inside the namespace at path ``netns``; its decoded JSON."""
    try:
        done = subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(IO_FAILURE, f"cannot look into {netns}", str(exc)) from exc
    if done.returncode != 0:
        raise CniError(IO_FAILURE, f"{' '.join(argv)} in {netns} failed", done.stderr.decode(errors="replace"))
    return json.loads(done.stdout) if done.stdout.strip() else []


def require_netns(env: Env) -> None:
    if not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {env.netns} does not exist")


# -- commands --------------------------------------------------------------------------------

def cmd_add(config: Config, env: Env, environ: Mapping[str, str]) -> dict[str, Any]:
    require_netns(env)
    state = read_state(config, environ)
    conf = dg.build_delegate_conf(config, state, config.cni_version)  # validates the overrides
    binary = find_delegates(conf, env.path)
    version = speak_version(config, binary, env)
    if version != config.cni_version:
        conf = dg.build_delegate_conf(config, state, version)
    path = cache_path(config, environ, env.container_id, env.ifname)
    record: dict[str, Any] = {
        "containerID": env.container_id, "ifname": env.ifname, "netns": env.netns, "network": config.name,
        "mesh": config.mesh, "subnet": str(state.subnet), "network_cidr": str(state.network_cidr),
        "cniVersion": config.cni_version, "delegate": conf, "result": None,
    }
    write_atomic(path, record)  # first, so that DEL can undo a half-done ADD
    result = exec_plugin(binary, "ADD", conf, env)
    if result is None:
        raise CniError(DELEGATE_FAILED, f"{os.path.basename(binary)} ADD printed no result")
    record["result"] = result
    write_atomic(path, record)
    return dg.merge_prev_result(config.prev_result, dg.restamp(result, config.cni_version))


def _delegate_del(conf: Mapping[str, Any], env: Env, overrides: Mapping[str, str] | None = None) -> None:
    binary = find_delegates(conf, env.path)
    exec_plugin(binary, "DEL", conf, env, overrides)


def cmd_del(config: Config, env: Env, environ: Mapping[str, str]) -> None:
    path = cache_path(config, environ, env.container_id, env.ifname)
    record = read_cache(path)
    if record is not None:
        conf = record["delegate"]
    else:
        # Nothing cached: ADD never got as far as the delegate, or the cache was lost. Undo
        # what the delegate may hold for this container if the mesh still tells us how.
        try:
            state = read_state(config, environ)
            # Spoken in 1.0.0 for 1.1.0: a DEL prints nothing, and every delegate knows 1.0.0.
            version = "1.0.0" if config.cni_version == "1.1.0" else config.cni_version
            conf = dg.build_delegate_conf(config, state, version)
        except CniError:
            return
    netns = env.netns if env.netns and os.path.exists(env.netns) else ""
    _delegate_del(conf, env, {"CNI_NETNS": netns})
    remove(path)


def cmd_check(config: Config, env: Env, environ: Mapping[str, str]) -> None:
    require_netns(env)
    record = read_cache(cache_path(config, environ, env.container_id, env.ifname))
    if record is None or not isinstance(record.get("result"), dict):
        raise CniError(NO_ATTACHMENT, f"no attachment of network {config.name} for container "
                       f"{env.container_id} interface {env.ifname}")
    state = read_state(config, environ)
    if str(state.subnet) != record.get("subnet") or str(state.network_cidr) != record.get("network_cidr"):
        raise CniError(LEASE_CHANGED, f"the mesh now leases {state.subnet} of {state.network_cidr} to this "
                       f"node; the pod got its address from {record.get('subnet')} of {record.get('network_cidr')}")
    conf = dict(record["delegate"])
    links = in_netns(env.netns, ["ip", "-j", "addr", "show"])
    routes = {4: in_netns(env.netns, ["ip", "-j", "-4", "route", "show"]),
              6: in_netns(env.netns, ["ip", "-j", "-6", "route", "show"])}
    mtu = conf.get("mtu") if isinstance(conf.get("mtu"), int) else None
    problems = dg.prev_result_problems(config.prev_result or {}, record["result"], env.ifname)
    problems += dg.check_attachment(record["result"], env.ifname, mtu, links, routes)
    if problems:
        raise CniError(CHECK_FAILED, problems[0], "; ".join(problems))
    conf["prevResult"] = record["result"]
    exec_plugin(find_delegates(conf, env.path), "CHECK", conf, env)


def cmd_status(config: Config, env: Env, environ: Mapping[str, str]) -> None:
    try:
        state = read_state(config, environ)
        find_delegates(dg.build_delegate_conf(config, state, config.cni_version), env.path)
    except CniError as exc:
        raise CniError(NOT_AVAILABLE, f"plugin not available: {exc.msg}", exc.details) from exc


def cmd_gc(config: Config, env: Env, environ: Mapping[str, str]) -> None:
    directory = cache_dir(config, environ)
    cached: dict[tuple[str, str], Path] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        record = read_cache(path)
        if record is not None and isinstance(record.get("containerID"), str) and isinstance(record.get("ifname"), str):
            cached[(record["containerID"], record["ifname"])] = path
    failures = []
    for container_id, ifname in dg.attachments_to_collect(cached, valid_attachments(config)):
        path = cached[(container_id, ifname)]
        record = read_cache(path) or {}
        netns = str(record.get("netns") or "")
        attachment = Env("DEL", container_id, netns if netns and os.path.exists(netns) else "", ifname, (), env.path)
        try:
            _delegate_del(record["delegate"], attachment)
        except CniError as exc:
            failures.append(f"{container_id}/{ifname}: {exc.msg}")
            continue
        remove(path)
    if failures:
        raise CniError(DELEGATE_FAILED, f"GC could not release {len(failures)} attachment(s)", "; ".join(failures))


def run(stdin: bytes, environ: Mapping[str, str]) -> tuple[int, dict[str, Any] | None]:
    """One invocation: (exit status, object to print). Every failure is an error object."""
    version = LATEST
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            raw = decode(stdin) if stdin.strip() else {}
            asked = raw.get("cniVersion")
            return 0, {"cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST,
                       "supportedVersions": list(SUPPORTED_VERSIONS)}
        raw = decode(stdin)
        if raw.get("cniVersion") in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        config = parse_config(raw, env.command)
        if env.command == "ADD":
            return 0, cmd_add(config, env, environ)
        {"DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}[env.command](config, env, environ)
        return 0, None
    except CniError as exc:
        return 1, exc.to_json(version)
    except OSError as exc:
        return 1, CniError(IO_FAILURE, "I/O failure", str(exc)).to_json(version)
    except Exception as exc:  # the runtime must get an error object, never a traceback
        return 1, CniError(INTERNAL_ERROR, "unexpected failure in wg-py-cni", repr(exc)).to_json(version)


def main() -> int:
    """Console entry point ``wg-py-cni``."""
    status, out = run(sys.stdin.buffer.read(), os.environ)
    if out is not None:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
