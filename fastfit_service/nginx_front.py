"""The nginx front of the launcher: its configuration, rendered from the settings, and its files.

deploy/nginx/fastfit.conf.template holds the configuration; this module fills its placeholders
from the settings (timeouts, body limit, connection limits, the instances as upstream servers,
the front's own error answers from the error catalogue), chooses where nginx may write its
access log and temp files, and finds its binary. No counterpart in the reference implementation.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fastfit_engine.errors import transport_errors
from fastfit_engine.settings import SETTINGS_BY_NAME, is_set, read
from fastfit_service.instances import Instance, LaunchError

__all__ = ["front_access_log", "front_listen", "nginx_binary", "nginx_error_locations", "nginx_user_line",
           "prepare_temp_dirs", "render_nginx_config"]

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "fastfit.conf.template"


def _ms(env: dict[str, str], name: str) -> str:
    """Seconds from the environment (fractions allowed) as an nginx time in milliseconds."""
    return f"{round(read(name, env) * 1000)}ms"


DEFAULT_ACCESS_LOG: str = SETTINGS_BY_NAME["FASTFIT_FRONT_ACCESS_LOG"].default


def front_access_log(env: dict[str, str], run_dir: str) -> str:
    """Where nginx writes its access log: FASTFIT_FRONT_ACCESS_LOG (must be writable), else stdout.
    nginx opens stdout by its path, which fails where this process's stdout is a socket (systemd's
    journal) or a file of another user: then a file in the run folder, said on stderr."""
    wanted = read("FASTFIT_FRONT_ACCESS_LOG", env) if is_set("FASTFIT_FRONT_ACCESS_LOG", env) else ""
    target = wanted or DEFAULT_ACCESS_LOG
    try:
        with open(target, "a"):
            pass
    except OSError as exc:
        if wanted:
            raise LaunchError(f"FASTFIT_FRONT_ACCESS_LOG={wanted!r} cannot be written: {exc.strerror or exc}") from None
        fallback = str(Path(run_dir) / "access.log")
        print(f"fastfit.launch: nginx cannot write its access log to {target} ({exc.strerror or exc}); writing it "
              f"to {fallback} instead (FASTFIT_FRONT_ACCESS_LOG chooses another file)", file=sys.stderr, flush=True)
        return fallback
    return target


def front_listen(env: dict[str, str]) -> str:
    return read("FASTFIT_LISTEN", env) or f"0.0.0.0:{read('PORT', env)}"


def nginx_error_locations(max_body_mb: str, retry_after: str) -> str:
    """The front's own error answers, one location per status, from the error catalogue (the
    API's JSON shape; Retry-After where the catalogue says so; an add_header in a location
    replaces the inherited ones, so nosniff is repeated there)."""
    lines = []
    for status, c in sorted(transport_errors("nginx").items()):
        body = json.dumps({"error": {"code": c.code, "message": c.message.format(max_body_mb=max_body_mb)}})
        headers = (f"add_header Retry-After {retry_after} always; add_header X-Content-Type-Options nosniff always; "
                   if c.retry_after else "")
        lines.append(f"            location = /_fastfit_error/{status} {{ {headers}return {status} '{body}\\n'; }}\n")
    return "".join(lines)


def render_nginx_config(env: dict[str, str], instances: list[Instance], run_dir: str,
                        temp_dir: str | None = None) -> str:
    queue = read("FASTFIT_QUEUE_SIZE", env)
    per_ip = read("FASTFIT_FRONT_CONN_PER_IP", env)
    conn_limit = ""
    if per_ip > 0:
        conn_limit = ("    limit_conn_zone $binary_remote_addr zone=fastfit_per_ip:10m;\n"
                      f"    limit_conn fastfit_per_ip {per_ip};\n    limit_conn_status 429;\n")
    max_upload = read("FASTFIT_MAX_UPLOAD_MB", env)
    max_body_mb = str(int(max_upload) + (1 if max_upload % 1 else 0))
    values = {
        "run_dir": run_dir,
        "temp_dir": temp_dir or run_dir,
        "user": nginx_user_line(),
        "worker_connections": str(read("FASTFIT_FRONT_MAX_CONNECTIONS", env)),
        "access_log": read("FASTFIT_FRONT_ACCESS_LOG", env),
        "client_header_timeout": _ms(env, "FASTFIT_FRONT_HEADER_TIMEOUT"),
        "client_body_timeout": _ms(env, "FASTFIT_FRONT_BODY_TIMEOUT"),
        "send_timeout": _ms(env, "FASTFIT_FRONT_SEND_TIMEOUT"),
        # nginx refuses a body above this itself; the app's own limit (same number) stays exact
        "max_body_mb": max_body_mb,
        "conn_limit": conn_limit,
        "prompt_servers": "\n".join(f"        server {i.address} max_conns={1 + queue};" for i in instances),
        "any_servers": "\n".join(f"        server {i.address};" for i in instances),
        "listen": front_listen(env),
        "upstream_read_timeout": _ms(env, "FASTFIT_FRONT_UPSTREAM_TIMEOUT"),
        "next_upstream_tries": str(len(instances)),
        "retry_after": str(read("FASTFIT_RETRY_AFTER", env)),
        "error_locations": nginx_error_locations(max_body_mb, str(read("FASTFIT_RETRY_AFTER", env))),
        "instance_locations": "".join(
            f"        location = /instances/{i.index}/{ep} {{ proxy_pass http://{i.address}/{ep}; }}\n"
            for i in instances for ep in ("health", "ready", "metrics")),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise LaunchError("nginx template has an unknown placeholder: " + text.split("{{", 1)[1].split("}}")[0])
    return text


TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_user_line() -> str:
    """As root (CI, a root container) nginx's workers would drop to a user that cannot write the
    run folder: name an unprivileged user explicitly (prepare_temp_dirs hands it the temp folders).
    As any other user (the image runs as uid 1000) nginx cannot switch users and needs no line."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    return f"user {user.pw_name} {grp.getgrgid(user.pw_gid).gr_name};"


def prepare_temp_dirs(run_dir: str) -> str:
    """nginx's temp folders (request bodies over 1 MB are buffered there), writable by its workers;
    returns their parent. As root they live in a fresh folder under the system temp directory that
    the unprivileged worker user can reach (the run folder's parents may be private)."""
    base = Path(run_dir)
    owner = None
    if os.geteuid() == 0:
        import pwd

        base = Path(tempfile.mkdtemp(prefix="fastfit-nginx-temp-"))
        base.chmod(0o711)
        user = pwd.getpwnam("nobody")
        owner = (user.pw_uid, user.pw_gid)
    for name in TEMP_DIRS:
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(path, *owner)
    return str(base)


def nginx_binary(env: dict[str, str]) -> str:
    path = read("FASTFIT_NGINX", env) or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists() and shutil.which(path) is None:
        raise LaunchError("nginx is not installed (apt-get install nginx), or set FASTFIT_NGINX")
    return path
