"""How the nginx backend finds the running master's pid file and configuration (pure parts).

The running-nginx paths are in test_nginx.py (a private nginx) and
tests/ops/test_boot_realip.py (Debian's nginx under systemd).
"""

from __future__ import annotations

from cfallow.backends.realip.nginx_master import compiled, main_config, option, pid_directive

DUMP = """\
nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
user www-data;
# pid /wrong/commented.pid;
events { worker_connections 768; }
http {
    server { location / { pid_like /not/top/level.pid; } }
    include /etc/nginx/conf.d/*.conf;
}
pid /run/nginx.pid;

# configuration file /etc/nginx/conf.d/other.conf:
pid /run/not-the-main-file.pid;
"""
VERSION = (
    "nginx version: nginx/1.22.1\n"
    "configure arguments: --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf "
    "--pid-path=/run/nginx.pid --error-log-path=/var/log/nginx/error.log\n"
)


def test_the_main_files_top_level_pid_is_the_pid_file() -> None:
    assert main_config(DUMP) == "/etc/nginx/nginx.conf"
    assert pid_directive(DUMP, []) == "/run/nginx.pid"


def test_a_pid_given_with_dash_g_wins() -> None:
    assert pid_directive(DUMP, ["-g", "daemon off; pid /tmp/g.pid;"]) == "/tmp/g.pid"


def test_no_pid_directive_leaves_it_to_the_compiled_default() -> None:
    dump = "# configuration file /etc/nginx/nginx.conf:\nevents { pid /x; }\n"
    assert pid_directive(dump, []) is None
    assert pid_directive("not a dump", []) is None
    assert compiled(VERSION, "pid-path") == "/run/nginx.pid"
    assert compiled(VERSION, "prefix") == "/usr/share/nginx"
    assert compiled(VERSION, "conf-path") == "/etc/nginx/nginx.conf"
    assert compiled(VERSION, "http-log-path") is None


def test_options_of_a_master_command_line() -> None:
    debian = ["/usr/sbin/nginx", "-g", "daemon", "on;", "master_process", "on;"]
    assert option(debian, "-c") is None
    assert option(["nginx", "-c", "/etc/x.conf", "-p", "/srv/"], "-c") == "/etc/x.conf"
    assert option(["nginx", "-c/etc/y.conf"], "-c") == "/etc/y.conf"
    assert option(["nginx", "-p", "/srv/"], "-p") == "/srv/"
