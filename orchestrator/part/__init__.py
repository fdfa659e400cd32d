"""A job's life, from launch to promotion: a part's, or a release's (the second kind of job).

runner      PartRunner: the one owner of the running job; the daemon asks it to launch,
            check, stop, and recover after a restart
context     JobContext: the paths, state, plan in force, events and save they all share
start       may a part start now, and from what (its scratch, or the chain's checkpoint)
spec        the resolved spec written for the part's worker (frozen once it trains)
launch      the command lines that start a worker: one process, torchrun, agents on other machines
process     the worker subprocess(es): launched in their own process group, adopted, stopped, killed
watch       Watch: one running worker's heartbeat, hang clock, own pauses, what it was told
settle      how a job ends: promote, requeue, retry after a backoff, fail, give up
life        the only code that changes a job's status (the state machine's table)
policy      what to do when a worker ends (retry, halve the batch, skip, fail)
lineage     which checkpoint a part starts from; scratch from another start is set aside
scratch     what becomes of work/<job>/: set aside, cleared, its quarantine notes reported
promote     a verified final checkpoint becomes checkpoints/NNNN-stage-part/
release     a cooled release: queued after every k-th part, its spec, promoted into releases/
"""
