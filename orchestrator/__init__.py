"""The daemon and its command line. Never imports torch: `status` must answer fast and
the daemon must stay small for days; anything that needs torch runs in a worker
subprocess."""
