"""One sync run, from spec to committed data: `driver.run_sync` plans partitions, runs read tasks on Ray,
hands Arrow tables to writer actors (`layers.bronze`), checkpoints each committed partition in the ledger, then
merges silver and refreshes gold. Also the Ray runtime (`raytime`), the long-lived local head (`localray`),
Ray Jobs submission (`rayjobs`) and the worker that executes queued runs (`worker`).
"""
