"""Throwaway servers for the demo, the tests and the benchmarks: a PostgreSQL cluster,
an OpenSSH sshd and an S3 server with Object Lock started for one run, and a gateway
workdir (keys, config, grants) built around them. Nothing here runs in production."""
