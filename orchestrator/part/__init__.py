"""A part's life, from launch to promotion (and a release's, the runner's second kind of job).

spec        the resolved spec written for the part's worker (frozen once it trains)
process     the worker subprocess: launch in its own process group, adopt, stop, kill
runner      PartRunner: launch, watch the heartbeat, settle the part when it ends
policy      what to do when a worker ends (retry, halve the batch, skip, fail)
lineage     which checkpoint a part starts from; scratch from another start is set aside
promote     a verified final checkpoint becomes checkpoints/NNNN-stage-part/
release     a cooled release: queued after every k-th part, its spec, promoted into releases/
"""
