# -*- test-case-name: tests.test_squidconf_directives -*-
"""What fwproxy does with each Squid directive it does not translate, and why.

Caching directives are dropped (fwproxy does not cache); process directives are dropped with
fwproxy's equivalent named; directives that decide who may go where (helpers, adaptation,
interception, address rewriting) have no equivalent and are errors; the rest are known and
change no access decision (warnings). A directive in none of these lists is unknown: a
warning too, since Squid itself would refuse a file with a directive it does not know only
if it was misspelt.
"""

from __future__ import annotations

#: "fwproxy does not cache"
CACHE = frozenset(
    """cache cache_dir cache_mem cache_replacement_policy memory_replacement_policy
    cache_swap_low cache_swap_high cache_store_log store_dir_select_algorithm refresh_pattern
    maximum_object_size minimum_object_size maximum_object_size_in_memory memory_cache_mode
    memory_cache_shared memory_pools memory_pools_limit store_avg_object_size
    store_objects_per_bucket offline_mode quick_abort_min quick_abort_max quick_abort_pct
    range_offset_limit collapsed_forwarding negative_ttl negative_dns_ttl positive_dns_ttl
    minimum_expiry_time reload_into_ims max_stale cache_miss_revalidate store_id_program
    store_id_children store_id_access storeurl_rewrite_program digest_generation
    cache_vary cache_swap_state send_hit store_miss read_ahead_gap vary_ignore_expire
    update_headers ipcache_size ipcache_low ipcache_high fqdncache_size shared_memory_locking
    cache_peer_domain""".split()
)

#: process directives and what fwproxy has instead
PROCESS = {
    "pid_filename": "twistd --pidfile FILE, or your service manager",
    "coredump_dir": "your service manager's working directory",
    "cache_effective_user": "run fwproxy as that user (systemd User=, a container's USER)",
    "cache_effective_group": "run fwproxy as that group (systemd Group=)",
    "workers": "fwproxy run --workers N",
    "cpu_affinity_map": "taskset, or systemd CPUAffinity=",
    "cache_log": "fwproxy's own log goes to standard output (twistd --logfile FILE)",
    "debug_options": "twistd's logging",
    "logfile_rotate": "logrotate, then SIGUSR1 (fwproxy re-opens its access log)",
    "max_filedescriptors": "ulimit -n or systemd LimitNOFILE= ([limits] max_connections follows it)",
    "sslcrtd_program": "fwproxy ca init (the interception CA)",
    "sslcrtd_children": "fwproxy makes host certificates itself",
    "mail_from": "monitor fwproxy's log",
    "cache_mgr": "the admin listener ([admin])",
    "chroot": "a container, or systemd RootDirectory=",
    "logfile_daemon": "fwproxy writes its access log itself",
}

#: directives that decide access and have no fwproxy equivalent: errors
ACCESS = {
    "external_acl_type": "external ACL helpers: write an fwproxy filter (docs/filters.md)",
    "url_rewrite_program": "URL rewriting: write an fwproxy filter",
    "url_rewrite_access": "URL rewriting: write an fwproxy filter",
    "url_rewrite_children": "URL rewriting: write an fwproxy filter",
    "redirect_program": "URL rewriting: write an fwproxy filter",
    "adapted_http_access": "a second access check after adaptation",
    "http_reply_access": "access decided on the reply",
    "miss_access": "access decided for cache misses",
    "follow_x_forwarded_for": "the client address taken from X-Forwarded-For (fwproxy: a "
    "haproxy: listener takes it from the PROXY protocol)",
    "acl_uses_indirect_client": "the client address taken from X-Forwarded-For",
    "icap_service": "ICAP adaptation",
    "ecap_service": "eCAP adaptation",
    "adaptation_access": "ICAP/eCAP adaptation",
    "icap_enable": "ICAP adaptation",
    "ecap_enable": "eCAP adaptation",
    "ident_lookup_access": "ident lookups",
    "on_unsupported_protocol": "what a peeked tunnel that is not TLS gets",
    "sslproxy_cert_error": "certificate errors of bumped connections",
    "if": "conditional configuration: convert each variant separately",
    "else": "conditional configuration: convert each variant separately",
    "endif": "conditional configuration: convert each variant separately",
    "reply_body_max_size": "reply size limits",
}

#: known, with no fwproxy equivalent, changing no access decision
KNOWN = frozenset(
    """client_lifetime dns_nameservers dns_v4_first dns_timeout dns_retransmit_interval
    hosts_file append_domain httpd_suppress_version_string error_directory error_default_language
    deny_info err_html_text ftp_user ftp_passive ftp_epsv ftp_epsv_all ftp_sanitycheck
    icp_port htcp_port snmp_port snmp_access icp_access htcp_access cachemgr_passwd
    pconn_timeout persistent_request_timeout half_closed_clients client_persistent_connections
    server_persistent_connections detect_broken_pconn balance_on_multiple_ip
    unique_hostname dns_defnames uri_whitespace relaxed_header_parser strip_query_terms
    log_mime_hdrs log_fqdn buffered_logs netdb_filename announce_period prefer_direct
    nonhierarchical_direct retry_on_error forward_max_tries connect_retries
    request_header_max_size reply_header_max_size check_hostnames allow_underscore
    sslproxy_cafile sslproxy_capath tls_outgoing_options sslproxy_options
    ignore_unknown_nameservers client_db max_open_disk_fds high_response_time_warning
    high_page_fault_warning high_memory_warning ie_refresh vary_ignore_expire
    error_log_languages httpd_accel_no_pmtu_disc host_verify_strict client_dst_passthru
    pipeline_prefetch forward_timeout peer_connect_timeout dead_peer_timeout
    request_entities visible_hostname_header_access mcast_groups umask access_log_format
    url_rewrite_extras header_replace request_header_replace reply_header_add
    note happy_eyeballs_connect_timeout configuration_includes_quoted_values
    authenticate_ttl authenticate_ip_ttl max_user_ip authenticate_cache_garbage_interval
    connection_auth collapsed_forwarding_access delay_pools delay_class delay_access
    delay_parameters delay_initial_bucket_level tcp_outgoing_address tcp_outgoing_tos
    tcp_outgoing_mark client_delay_pools client_delay_parameters client_delay_access
    hierarchy_stoplist broken_vary_encoding""".split()
)

#: ``[timeouts]`` keys of Squid's timeouts
TIMEOUTS = {
    "connect_timeout": "connect",
    "read_timeout": "read",
    "request_timeout": "request_header",
    "client_idle_pconn_timeout": "client_idle",
    "shutdown_lifetime": "drain",
}
