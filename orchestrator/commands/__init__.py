"""One module per CLI command (orchestrator.cli maps names to them). A command that needs
torch (sample, evaluate, compare --prompts, export) imports it inside the function.

    demo        the whole tool in minutes          run        the daemon
    validate    validate, schema                   status     the chain at a glance
    logs        the runtime log                    control    pause, resume, stop, skip, retry
    service     install-service (systemd unit)     fsck       check and repair a run directory
    evaluate    losses, bits per byte              compare    checkpoints side by side, forgetting
    harness     evaluate --harness: lm-evaluation-harness on an HF export
    prompts     compare --prompts                  sample     text from a checkpoint
    plot        one figure of the chain            export     a checkpoint for use elsewhere
    doctor      preflight: machine and schedule
    slurm       an sbatch script that runs the chain inside a Slurm allocation
    serve       the status page and /metrics; `metrics`, the Prometheus exposition once
"""
