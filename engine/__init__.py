"""The engine: everything between a spec and committed data, in layers that import downward only.

    core          spec models, the connector protocol, the error tree, fault points, SQL and YAML helpers
    controlplane  the control-plane database: settings, migrations, records, the state ledger, the Vault,
                  API tokens, the run queue, the scheduler, webhooks
    run           one run: planning, Ray read tasks and writer actors, checkpoints, the local Ray head,
                  Ray Jobs, the worker that executes queued runs
    pipelines     YAML DAGs of runs and gold refreshes
    cli           the `ipai` command

`connectors` and `layers` sit between `core` and `controlplane`: they import only `engine.core`, and the run
loop imports them. tests/test_layering.py enforces the order.
"""
