"""The daemon: one loop that runs a chain for days.

recovery    start-up on a run directory in any state: create it, load or rebuild
            state.json (the runner's recover() finishes what a killed predecessor left)
loop        the Daemon: signals, requests, schedule edits, guard, worker, next part
pauses      Pauses: why the chain may not train now (user, guard, full disk, I/O fault)
requests    the control/ files through which CLI commands ask the daemon for things
watcher     notices schedule edits (watchdog/inotify)
notify      systemd's sd_notify: READY, STATUS, WATCHDOG, STOPPING
"""
