"""What test modules share, kept here instead of copied: test modules import from tests.support, never from
each other.

    databases    scratch databases on the test Postgres (created empty, dropped afterwards); migrating one
    cli          running `ipai` as a user does: its environment, one command to completion, a long-lived process
    waiting      polling until a state is reached, with a deadline that only turns a hang into a failure
    syncing      one sync of a spec's text; what a run planned and recorded
    shop         a small sample shop spec and what a user checks once it synced
    rpc          calling the control plane's RPC functions in SQL
    github       what the GitHub emulator holds and what bronze loaded of it
    vault        the test database's Vault, as an admin sees it
    truth        what the source said and what bronze holds: the verifier every sync test shares
    conformance  what the connector conformance suite checks of bronze, for any connector
    canary       searching every sink (database, files, outputs, Ray's logs) for a canary secret
"""
