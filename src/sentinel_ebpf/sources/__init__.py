"""Where the daemon's rules come from: a file (``daemon.watch.FileSource``) or an etcd key
(``etcd_source.EtcdSource``), behind one interface (``base.RulesSource``) so reloads are the same.

Modules: ``url`` (etcd URLs and TLS options), ``etcd`` (the client operations on one key), ``cache``
(the last document applied from etcd), ``backoff`` (retry delays), ``etcd_source`` (watching a key).
This package imports nothing from ``sentinel_ebpf.daemon``.
"""
