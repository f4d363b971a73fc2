"""cfallow's built-in backends (installed as ``cfallow.backends``).

Each package here is a plugin family registered in the ``cfallow.backends``
entry-point group; the core never imports them directly.
"""

from cfallow import _moved

# 0.1's flat module paths (deprecated, removed in the next release).
_moved.install(
    {
        "cfallow.backends.aws_client": "cfallow.backends.aws.client",
        "cfallow.backends.aws_groups": "cfallow.backends.aws.groups",
        "cfallow.backends.aws_prefixlists": "cfallow.backends.aws.prefixlists",
        "cfallow.backends.aws_rules": "cfallow.backends.aws.rules",
        "cfallow.backends.fail2ban_cache": "cfallow.backends.fail2ban.cache",
        "cfallow.backends.fail2ban_client": "cfallow.backends.fail2ban.client",
        "cfallow.backends.fail2ban_copy": "cfallow.backends.fail2ban.copy",
        "cfallow.backends.fail2ban_diff": "cfallow.backends.fail2ban.diff",
        "cfallow.backends.fail2ban_dropin": "cfallow.backends.fail2ban.dropin",
        "cfallow.backends.fail2ban_record": "cfallow.backends.fail2ban.record",
        "cfallow.backends.fail2ban_socket": "cfallow.backends.fail2ban.socket",
        "cfallow.backends.firewalld_admin": "cfallow.backends.firewalld.admin",
        "cfallow.backends.firewalld_builtin": "cfallow.backends.firewalld.builtin",
        "cfallow.backends.firewalld_bus": "cfallow.backends.firewalld.bus",
        "cfallow.backends.firewalld_diff": "cfallow.backends.firewalld.diff",
        "cfallow.backends.firewalld_plan": "cfallow.backends.firewalld.plan",
        "cfallow.backends.firewalld_state": "cfallow.backends.firewalld.state",
        "cfallow.backends.iptables_diff": "cfallow.backends.iptables.diff",
        "cfallow.backends.iptables_entries": "cfallow.backends.iptables.entries",
        "cfallow.backends.iptables_legacy": "cfallow.backends.iptables.legacy",
        "cfallow.backends.iptables_nft": "cfallow.backends.iptables.nft",
        "cfallow.backends.iptables_rules": "cfallow.backends.iptables.rules",
        "cfallow.backends.iptables_save": "cfallow.backends.iptables.save",
        "cfallow.backends.iptables_variant": "cfallow.backends.iptables.variant",
        "cfallow.backends.nftables_apply": "cfallow.backends.nftables.apply",
        "cfallow.backends.nftables_diff": "cfallow.backends.nftables.diff",
        "cfallow.backends.nftables_render": "cfallow.backends.nftables.render",
        "cfallow.backends.realip_apache": "cfallow.backends.realip.apache",
        "cfallow.backends.realip_caddy": "cfallow.backends.realip.caddy",
        "cfallow.backends.realip_haproxy": "cfallow.backends.realip.haproxy",
        "cfallow.backends.realip_nginx": "cfallow.backends.realip.nginx",
        "cfallow.backends.realip_nginx_master": "cfallow.backends.realip.nginx_master",
        "cfallow.backends.realip_pending": "cfallow.listfile",
        "cfallow.backends.realip_proc": "cfallow.backends.realip.proc",
    }
)
